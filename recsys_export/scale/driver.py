"""The Ray job's driver: :func:`score_topk_ray` starts (or joins) Ray, spreads blocks of
users over a pool of :class:`~recsys_export.scale.worker.BlockScorer` actors and writes
``_SUCCESS`` once every part is in place."""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys_export.bundle import Bundle
from recsys_export.core.progress import Progress
from recsys_export.core.topk import check_k
from recsys_export.core.validation import check_choice, check_int
from recsys_export.engines import EngineOptions
from recsys_export.errors import ConfigError, RecsysExportError, WorkerError
from recsys_export.runtime.sessions import check_providers
from recsys_export.scale.output import bundle_payload, finish_out_dir, prepare_out_dir
from recsys_export.scale.worker import SUCCESS_NAME, BlockScorer, error_class

__all__ = ["SHIP_MODES", "default_block_users", "score_topk_ray"]

SHIP_MODES = ("path", "object_store")
_INSTALL_HINT = "Ray is not installed: pip install 'recsys-export[ray]'"
#: Target seconds of work in one block on one core (bounded memory: a block's output is
#: ``users * k`` rows, written in sub-chunks).
_BLOCK_SECONDS = 4.0
_MAX_BLOCK = 100_000
_BLOCKS_PER_WORKER = 4


def default_block_users(
    n_users: int, n_items: int, workers: int, *, kind: str = "mf", hidden: int = 0
) -> int:
    """Users per block: about ``_BLOCK_SECONDS`` of work for one core, at most
    ``_MAX_BLOCK`` users, and small enough that every worker gets ~4 blocks (load
    balance, cheap retries).

    The cost model is rough: ~10 ns per (user, item) pair for MF top-k on one core
    (measured with 64 factors and 10k items; 17-28 ns at 200k items), ~0.2 ns per
    hidden unit per pair for DenseNet.
    """
    ns_per_pair = 10.0 if kind != "densenet" else max(10.0, 0.2 * max(hidden, 1))
    by_time = int(_BLOCK_SECONDS / (max(n_items, 1) * ns_per_pair * 1e-9))
    by_balance = math.ceil(max(n_users, 1) / (_BLOCKS_PER_WORKER * max(workers, 1)))
    return max(1, min(by_time, by_balance, _MAX_BLOCK))


def _import_ray() -> Any:
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401  (fail here if Ray is incomplete)
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    return ray


def _counts(max_retries: int, cpus_per_worker: int) -> tuple[int, int]:
    return (
        check_int("max_retries", max_retries, low=0),
        check_int("cpus_per_worker", cpus_per_worker, low=1),
    )


def _worker_options(
    device: str | None, providers: list[str] | None, threads: int, starts_local_ray: bool
) -> EngineOptions:
    """The job's options (:meth:`EngineOptions.checked` with ``engine="ray"``): torch must
    import here when the workers run it; providers are checked here when this call
    starts a local Ray (its workers share this onnxruntime), else by each worker."""
    options = EngineOptions("ray", device, providers, threads).checked()
    if options.device is not None:
        import recsys_export.torch_runtime.engine  # noqa: F401  (ConfigError without torch)
    elif options.providers is not None and starts_local_ray:
        return EngineOptions("ray", None, check_providers(options.providers), threads)
    return options


def _start_ray(ray: Any, address: str | None) -> bool:
    """Start a local Ray (``address`` None) or join ``address``; False if Ray was up."""
    if ray.is_initialized():
        return False
    init_kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    try:
        if address is None:
            # "local": never join some other Ray instance running on this machine
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **init_kwargs)
        else:
            ray.init(address=address, **init_kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(
            f"cannot start or reach {where} ({exc}); on the head node run "
            "`ray start --head --port=6379`, then pass --address HEAD:6379"
        ) from None
    return True


def _pool_size(
    ray: Any, device: str | None, workers: int | None, cpus_per_worker: int
) -> tuple[int, int]:
    """``(workers, gpus)`` the cluster can hold: one GPU per actor on cuda, else CPUs."""
    total_cpus = int(ray.cluster_resources().get("CPU", 0))
    gpus = 0
    if device == "cuda":
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < 1:
            raise ConfigError(
                "--device cuda with the ray engine, but the Ray cluster has no GPU "
                f"(resources: {total_cpus} CPUs, 0 GPUs); start Ray on GPU nodes "
                "(ray start --num-gpus N) or use --device cpu"
            )
        if workers is None:
            workers = gpus
        elif workers > gpus:
            raise ConfigError(
                f"{workers} GPU workers need {workers} GPUs but the Ray cluster has "
                f"{gpus}; pass --workers {gpus} or add GPU nodes"
            )
    if workers is None:
        free = int(ray.available_resources().get("CPU", 0)) or total_cpus
        workers = max(1, free // cpus_per_worker)
    if workers * cpus_per_worker > total_cpus:
        raise ConfigError(
            f"{workers} workers x {cpus_per_worker} CPUs need {workers * cpus_per_worker} "
            f"CPUs but the Ray cluster has {total_cpus}; pass --workers "
            f"{max(1, total_cpus // cpus_per_worker)} or add nodes"
        )
    return workers, gpus


def _blocks(
    model: Any, workers: int, block_users: int | None
) -> tuple[list[tuple[int, int]], int, int]:
    """``(bounds, block_users, workers)``: user blocks, never more actors than blocks."""
    if block_users is None:
        block_users = default_block_users(
            model.n_users, model.n_items, workers, kind=model.kind, hidden=model.hidden
        )
    n = model.n_users
    bounds = [(s, min(s + block_users, n)) for s in range(0, n, block_users)]
    return bounds, block_users, max(1, min(workers, len(bounds)))


def _spawn(
    ray: Any,
    actors: list[Any],
    workers: int,
    cpus: int,
    gpus: bool,
    max_retries: int,
    args: tuple[Any, ...],
) -> list[dict[str, Any]]:
    """Start the actors (into ``actors``, so that the caller stops them whatever
    happens) and wait until each has loaded its engine (or raise its error)."""
    actor_cls = ray.remote(BlockScorer).options(
        num_cpus=cpus,
        num_gpus=1 if gpus else 0,
        max_restarts=max_retries,
        max_task_retries=max_retries,
    )
    actors += [actor_cls.remote(*args) for _ in range(workers)]
    infos: list[dict[str, Any]] = ray.get([a.info.remote() for a in actors])
    for info in infos:
        if info["error"] is not None:
            name, msg = info["error"]
            raise error_class(name)(f"Ray worker (pid {info['pid']}): {msg}")
    return infos


def _run_blocks(
    ray: Any,
    actors: list[Any],
    bounds: list[tuple[int, int]],
    n_users: int,
    *,
    out: Path,
    progress: bool,
    max_retries: int,
    on_block_done: Callable[[dict[str, Any]], None] | None,
) -> dict[int, dict[str, Any]]:
    """Every block through an :class:`ray.util.ActorPool`; their records by block."""
    from ray.util import ActorPool

    pool = ActorPool(actors)
    for j, (s, e) in enumerate(bounds):
        pool.submit(lambda a, v: a.score_block.remote(*v), (j, s, e))
    records: dict[int, dict[str, Any]] = {}
    with Progress(n_users, unit="users", desc="ray top-k ", enabled=progress) as bar:
        while pool.has_next():
            try:
                rec = pool.get_next_unordered()
            except ray.exceptions.RayActorError as exc:
                raise WorkerError(
                    f"a Ray worker died more than max_retries={max_retries} times "
                    f"({type(exc).__name__}); the finished parts are in {out} but it has "
                    f"no {SUCCESS_NAME}: rerun with --force (and a larger max_retries)"
                ) from None
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if isinstance(cause, RecsysExportError):
                    raise type(cause)(str(cause)) from None
                raise WorkerError(
                    f"a Ray worker failed a block: {type(cause).__name__}: {cause}"
                ) from None
            records[rec["block"]] = rec
            bar.update(rec["users"], postfix=f"blocks {len(records)}/{len(bounds)}")
            if on_block_done is not None:
                on_block_done(rec)
    return records


def _stop(ray: Any, actors: list[Any], shipped: bool, started: bool) -> None:
    """Delete the nodes' copies of a shipped bundle, kill the actors (their CPUs go back
    to a Ray that outlives the call), stop a Ray this call started."""
    if shipped and actors:
        try:
            ray.get([a.release.remote() for a in actors], timeout=60)
        except Exception:
            pass
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:
            pass
    if started:
        ray.shutdown()


def score_topk_ray(
    bundle_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    k: int = 10,
    exclude_seen: bool = True,
    address: str | None = None,
    workers: int | None = None,
    block_users: int | None = None,
    progress: bool = True,
    max_retries: int = 3,
    cpus_per_worker: int = 1,
    ship_bundle: str = "path",
    overwrite: bool = False,
    on_block_done: Callable[[dict[str, Any]], None] | None = None,
    device: str | None = None,
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """Write every user's top-``k`` items to ``out_dir`` with a pool of Ray actors.

    Parameters
    ----------
    bundle_path : path
        A bundle, verified (checksums) on the driver and by every worker.
    out_dir : path
        Directory to create (its parent must exist), or an existing empty one; on a
        cluster, on a filesystem every worker can write. Receives one
        ``part-{block:06d}.parquet`` per block (``user, rank, item, score``, raw ids, as
        ``Recommender.write_topk``) and ``_SUCCESS`` (JSON) last.
    k, exclude_seen
        ``1 <= k <= n_items``; leave out the items each user rated in training.
    address : str, optional
        Ray cluster (``HEAD:6379``, ``ray://HEAD:10001``, ``auto``). Default: a local Ray
        with every core, stopped at the end; a Ray already initialised here is used.
    workers, block_users : int, optional
        Actors (default: CPUs // ``cpus_per_worker``, or the GPUs with cuda); users per
        block (default: :func:`default_block_users`).
    progress, max_retries
        Progress line on stderr; Ray restarts of a dead actor and re-runs of its block.
    cpus_per_worker : int
        CPUs each actor reserves; its engine uses as many threads.
    ship_bundle : {"path", "object_store"}
        ``path``: workers load ``bundle_path`` (the same path on every node);
        ``object_store``: its bytes go through Ray's object store, once.
    overwrite, on_block_done
        Replace a previous top-k output in ``out_dir`` (``--force``); a callable that
        gets each finished block's record on the driver.
    device : {None, "cpu", "cuda"}
        None: onnxruntime workers. Else the torch engine on every worker (torch needed
        there): ``"cuda"`` reserves one GPU per actor. The files are the same.
    providers : list of str, optional
        The onnxruntime workers' execution providers (``device`` None), checked on the
        driver when this call starts a local Ray, else by each worker (docs/scaling.md).

    Returns
    -------
    dict
        The summary also stored in ``_SUCCESS`` (users, blocks, files, rows, seconds, ...).

    Raises
    ------
    ConfigError
        Ray not installed, bad options (:class:`~recsys_export.engines.EngineOptions`),
        an unusable ``out_dir``, no cluster at ``address``, no GPU for ``"cuda"``.
    BundleError
        Missing/corrupted bundle, or one without the workers' program.
    WorkerError
        A block failed for good (a worker died more than ``max_retries`` times).
    """
    t0 = time.perf_counter()
    ray = _import_ray()
    check_choice("ship_bundle", ship_bundle, SHIP_MODES)
    max_retries, cpus_per_worker = _counts(max_retries, cpus_per_worker)
    workers = check_int("workers", workers, low=1, none_ok=True, hint=" (--workers)")
    block_users = check_int("block_users", block_users, low=1, none_ok=True)
    opts = _worker_options(
        device, providers, cpus_per_worker, address is None and not ray.is_initialized()
    )
    bundle = Bundle.load(bundle_path, verify=True)
    if opts.device is None:
        bundle.manifest.require_onnx("the runtime (and the ray engine) needs them")
    model = bundle.manifest.model
    k = check_k(k, model.n_items)
    out = prepare_out_dir(out_dir, overwrite)
    payload = bundle_payload(bundle) if ship_bundle == "object_store" else None
    actors: list[Any] = []
    t_ray = time.perf_counter()
    started = _start_ray(ray, address)
    ray_start_seconds = round(time.perf_counter() - t_ray, 3) if started else 0.0
    try:
        workers, gpus = _pool_size(ray, opts.device, workers, cpus_per_worker)
        bounds, block_users, workers = _blocks(model, workers, block_users)
        shipped = None if payload is None else [ray.put(payload), secrets.token_hex(8)]
        args = (str(bundle.root), str(out), k, exclude_seen, cpus_per_worker, shipped)
        infos = _spawn(
            ray, actors, workers, cpus_per_worker, opts.device == "cuda", max_retries,
            (*args, opts.device, opts.providers),
        )  # fmt: skip
        records = _run_blocks(
            ray, actors, bounds, model.n_users, out=out, progress=progress,
            max_retries=max_retries, on_block_done=on_block_done,
        )  # fmt: skip
        summary: dict[str, Any] = {
            "users": model.n_users, "blocks": len(bounds),
            "rows": int(sum(r["rows"] for r in records.values())),
            "seconds": round(time.perf_counter() - t0, 3),
            "ray_start_seconds": ray_start_seconds,
            "workers": workers, "cpus_per_worker": cpus_per_worker,
            "block_users": block_users, "k": k, "exclude_seen": exclude_seen,
            "bundle": str(bundle.root), "ship_bundle": ship_bundle,
            "device": opts.device, "gpus": gpus, "providers": infos[0]["providers"],
            "address": address, "ray_version": ray.__version__,
            "worker_pids": sorted({r["pid"] for r in records.values()}),
            "restarted_blocks": sorted(j for j, r in records.items() if r["reconstructed"]),
        }  # fmt: skip
        finish_out_dir(out, len(bounds), records, summary)
        return summary
    finally:
        _stop(ray, actors, payload is not None, started)
