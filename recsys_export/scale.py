"""Scale-out top-k scoring with Ray: every user's top-k list as a directory of Parquet files.

:func:`score_topk_ray` splits the user indices ``0..n_users-1`` into blocks and scores
them on a pool of Ray actors. Each actor loads the bundle once
(:meth:`Recommender.load <recsys_export.runtime.Recommender.load>`, checksums verified)
and answers a block with the same runtime code as the local path
(``Recommender.recommend(..., by_index=True)``), so the output equals
``Recommender.write_topk``'s, split into one file per block::

    OUT/
      part-000000.parquet    # columns user, rank, item, score (raw ids), users of block 0
      part-000001.parquet
      ...
      _SUCCESS               # JSON summary + list of parts, written last

Read it with ``pyarrow.parquet.read_table(OUT)`` or ``pandas.read_parquet(OUT)`` (both
skip names starting with ``_`` or ``.``). A directory without ``_SUCCESS`` is incomplete.

Design (see ``docs/scaling.md``):

* Ray core actors + :class:`ray.util.ActorPool`, not Ray Data: the unit of work is a
  block of user indices whose output file is written by the actor itself, with a
  deterministic name, to a temporary name and then ``os.replace``-d into place. A
  block that Ray retries therefore rewrites the same file and can never duplicate or
  lose rows; nothing but a few small dicts travels back to the driver.
* Actors are created with ``max_restarts`` and ``max_task_retries``: when a worker
  process dies, Ray restarts the actor (which reloads the bundle) and re-runs the
  block it was working on.
* Bundles reach workers by path (a filesystem every node sees), or with
  ``ship_bundle="object_store"`` as bytes put into Ray's object store once and
  materialised in a temporary directory on each worker. The output directory must be
  on a filesystem every worker can write (NFS, a shared disk; on one machine any
  directory).

* With ``device`` set, each actor runs the torch engine
  (:class:`~recsys_export.torch_runtime.engine.TorchEngine`, the bundle's pt2/TorchScript
  program) instead of onnxruntime: ``device="cuda"`` places one actor per GPU (Ray's
  ``num_gpus=1``; Ray sets each actor's ``CUDA_VISIBLE_DEVICES``, so it sees its GPU as
  ``cuda:0``); ``device="cpu"`` runs the same code on CPU actors.
* Without ``device``, ``providers`` are the onnxruntime execution providers of every
  actor's sessions (``Recommender.load(..., providers=...)``, e.g.
  ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` with ``onnxruntime-gpu`` on the
  workers). Names are checked by :func:`~recsys_export.runtime.engines.check_providers`,
  the rule of ``Recommender.load``: on the driver when this call starts a local Ray
  (the workers share its onnxruntime), by each worker otherwise (a cluster's workers
  may have another onnxruntime than the driver).

Ray is imported lazily: this module imports without it, and :func:`score_topk_ray`
raises :class:`~recsys_export.errors.ConfigError` saying how to install it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export import errors as _errors
from recsys_export.bundle import MANIFEST_NAME, Bundle
from recsys_export.core.atomic import remove_path, replacing, temp_sibling, write_text_atomic
from recsys_export.core.progress import Progress
from recsys_export.core.topk import check_k
from recsys_export.core.validation import check_choice, check_int
from recsys_export.errors import ConfigError, RecsysExportError, WorkerError

__all__ = [
    "PART_PATTERN",
    "SUCCESS_NAME",
    "WorkerError",
    "default_block_users",
    "score_topk_ray",
]

SUCCESS_NAME = "_SUCCESS"
PART_PATTERN = "part-{block:06d}.parquet"
SHIP_MODES = ("path", "object_store")
_INSTALL_HINT = "Ray is not installed: pip install 'recsys-export[ray]'"
#: Target seconds of work in one block on one core (bounded memory: a block's output is
#: ``users * k`` rows, written in sub-chunks of ``_SUB_CHUNK`` users).
_BLOCK_SECONDS = 4.0
_MAX_BLOCK = 100_000
_BLOCKS_PER_WORKER = 4
#: Users per ``recommend`` call inside a block (bounds the Arrow buffers of one write).
_SUB_CHUNK = 16_384


# ---------------------------------------------------------------------- sizing
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


# ---------------------------------------------------------------------- worker side
def _materialize(payload: dict[str, bytes], job: str) -> Path:
    """Write a shipped bundle (rel name -> bytes) into a temporary directory of this node.

    The directory is named after the job (a token of the driver's call), so the actors of
    one node, and an actor Ray restarts, share one copy: it is written to a private
    directory and renamed into place; whoever renames first wins.
    """
    final = Path(tempfile.gettempdir()) / f"recsys-export-bundle-{job}"
    if (final / MANIFEST_NAME).is_file():
        return final  # Recommender.load verifies every checksum
    work = temp_sibling(final)
    os.mkdir(work, 0o700)  # private, like mkdtemp
    try:
        # manifest last: a directory with a manifest is complete
        for rel in sorted(payload, key=lambda r: r == MANIFEST_NAME):
            dest = work / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(payload[rel])
        try:
            os.rename(work, final)
        except OSError:  # another actor of this node was first
            remove_path(work)
    except BaseException:
        remove_path(work)
        raise
    return final


class BlockScorer:
    """The actor: one loaded :class:`Recommender` (or, with ``device``, a
    :class:`~recsys_export.torch_runtime.engine.TorchEngine`), scoring blocks of user indices.

    Construction never raises (a failed actor constructor is not restarted by Ray and
    its error is hard to read): errors are kept and reported by :meth:`info` and
    :meth:`score_block`.
    """

    def __init__(
        self,
        bundle_path: str,
        out_dir: str,
        k: int,
        exclude_seen: bool,
        threads: int,
        payload: list[Any] | None = None,
        device: str | None = None,
        providers: list[str] | None = None,
    ) -> None:
        self.pid = os.getpid()
        self.out_dir = Path(out_dir)
        self.k = k
        self.exclude_seen = exclude_seen
        self.error: tuple[str, str] | None = None
        self.rec: Any = None
        self.schema: Any = None
        self.reconstructed = False
        self.node = ""
        self.shipped: Path | None = None
        self.sub_chunk = _SUB_CHUNK
        self.providers: list[str] | None = None
        try:
            import ray

            ctx = ray.get_runtime_context()
            self.reconstructed = bool(ctx.was_current_actor_reconstructed)
            self.node = str(ctx.get_node_id())
        except Exception:  # not inside Ray (unit use): nothing to report
            pass
        try:
            from recsys_export.runtime import Recommender

            root = bundle_path
            if payload is not None:
                import ray

                # a list around the ObjectRef: Ray does not resolve it for us, so the
                # bytes are fetched here (and again by a restarted actor)
                self.shipped = _materialize(ray.get(payload[0]), payload[1])
                root = str(self.shipped)
            if device is None:
                from recsys_export.runtime.engines import check_providers

                # the rule of Recommender.load, against this worker's onnxruntime
                self.providers = check_providers(providers)
                self.rec = Recommender.load(
                    root, intra_op_threads=threads, providers=self.providers
                )
            else:
                import torch

                from recsys_export.torch_runtime.engine import TorchEngine

                if device == "cpu":
                    torch.set_num_threads(threads)
                self.rec = TorchEngine.load(root, device=device)
                self.sub_chunk = min(_SUB_CHUNK, self.rec.block_size())
            self.schema = self.rec.topk_schema()
            if not self.out_dir.is_dir():
                raise ConfigError(
                    f"output directory {self.out_dir} does not exist on this worker (pid "
                    f"{self.pid}); put --out on a filesystem every Ray node can write"
                )
        except RecsysExportError as exc:
            self.error = (type(exc).__name__, str(exc))
        except Exception as exc:
            self.error = ("WorkerError", f"{type(exc).__name__}: {exc}")

    def info(self) -> dict[str, Any]:
        """pid, node id, whether Ray restarted this actor, its onnxruntime execution
        providers (None for torch-engine workers) and a load error if any."""
        return {
            "pid": self.pid,
            "node": self.node,
            "reconstructed": self.reconstructed,
            "providers": self.providers,
            "error": self.error,
        }

    def score_block(self, block: int, start: int, stop: int) -> dict[str, Any]:
        """Score users ``start..stop-1`` and write ``part-{block:06d}.parquet`` atomically."""
        if self.error is not None:
            raise _error_class(self.error[0])(self.error[1])
        import pyarrow.parquet as pq

        t0 = time.perf_counter()
        name = PART_PATTERN.format(block=block)
        final = self.out_dir / name
        users = np.arange(start, stop, dtype=np.int64)
        rows = 0
        # a retried block replaces the same file: no duplicates
        with (
            replacing(final) as tmp,
            contextlib.closing(pq.ParquetWriter(str(tmp), self.schema)) as writer,
        ):
            for s in range(0, users.size, self.sub_chunk):
                table = self.rec.topk_table(
                    users[s : s + self.sub_chunk], self.k, exclude_seen=self.exclude_seen
                )
                writer.write_table(table)
                rows += table.num_rows
        return {
            "block": block,
            "start": start,
            "stop": stop,
            "users": stop - start,
            "rows": rows,
            "file": name,
            "pid": self.pid,
            "node": self.node,
            "reconstructed": self.reconstructed,
            "seconds": time.perf_counter() - t0,
        }

    def release(self) -> None:
        """Delete this node's copy of a shipped bundle (called once all blocks are done)."""
        if self.shipped is not None:
            shutil.rmtree(self.shipped, ignore_errors=True)
            self.shipped = None


def _error_class(name: str) -> type[RecsysExportError]:
    if name == "WorkerError":
        return WorkerError
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, RecsysExportError):
        return cls
    return WorkerError


# ---------------------------------------------------------------------- driver side
def _import_ray() -> Any:
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401  (fail here if Ray is incomplete)
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    return ray


def _is_ours(name: str) -> bool:
    return (
        name == SUCCESS_NAME
        or name.startswith(".part-")
        or name.startswith("._SUCCESS")
        or (name.startswith("part-") and name.endswith(".parquet"))
    )


def _prepare_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    path = Path(os.path.abspath(os.fspath(out_dir)))
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"cannot write {path}: it is a file; --out names a directory for the part files"
        )
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        if entries:
            if not overwrite:
                raise ConfigError(
                    f"output directory {path} is not empty ({len(entries)} entries, e.g. "
                    f"{entries[0]!r}); choose a new --out or pass --force to replace a "
                    "previous top-k output there"
                )
            foreign = [e for e in entries if not _is_ours(e)]
            if foreign:
                raise ConfigError(
                    f"output directory {path} holds files that are not top-k output "
                    f"({', '.join(foreign[:3])}); --force only replaces part-*.parquet and "
                    f"{SUCCESS_NAME}: choose another --out"
                )
            # _SUCCESS first: a reader never sees a success marker over missing parts.
            for name in sorted(entries, key=lambda e: e != SUCCESS_NAME):
                (path / name).unlink()
    else:
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(
                f"cannot create {path}: directory {parent} does not exist; create it first"
            )
        try:
            path.mkdir()
        except OSError as exc:
            raise ConfigError(f"cannot create {path}: {exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: directory is not writable")
    return path


def _bundle_payload(bundle: Bundle) -> dict[str, bytes]:
    """Every file of a (verified) bundle: manifest + listed files, rel name -> bytes."""
    # the files the bundle checked and holds open, even if it was replaced since
    payload = {MANIFEST_NAME: bundle.read_bytes(MANIFEST_NAME)}
    for rel in bundle.files:
        payload[rel] = bundle.read_bytes(rel)
    return payload


def _check_device(device: str | None) -> str | None:
    """The actors' device (``None``: onnxruntime); the torch engine must import here."""
    if device is None:
        return None
    device = str(device).strip().lower()
    if device not in ("cpu", "cuda"):
        raise ConfigError(
            f"unsupported device {device!r} for the ray engine: use cpu or cuda (Ray gives "
            "each worker its own GPU, which it sees as cuda:0)"
        )
    import recsys_export.torch_runtime.engine  # noqa: F401  (ConfigError without torch)

    return device


def _check_providers(
    providers: list[str] | None, device: str | None, starts_local_ray: bool
) -> list[str] | None:
    """The onnxruntime workers' execution providers, checked where this onnxruntime is
    the workers' (``starts_local_ray``); otherwise each worker checks them on load.

    Raises
    ------
    ConfigError
        ``providers`` with ``device`` (torch-engine workers have no onnxruntime
        sessions), or, on a local Ray, a name this onnxruntime does not have.
    """
    if providers is None:
        return None
    if device is not None:
        raise ConfigError(
            f"providers are for the onnxruntime workers, but device={device!r} runs the "
            "torch engine on the workers: drop --providers, or --device to use onnxruntime"
        )
    if not starts_local_ray:
        return providers
    from recsys_export.runtime.engines import check_providers  # Recommender.load's rule

    return check_providers(providers)


def _model_sizes(bundle: Bundle, device: str | None = None) -> tuple[int, int, str, int]:
    if device is None:
        bundle.manifest.require_onnx("the runtime (and the ray engine) needs them")
    model = bundle.manifest.model
    return model.n_users, model.n_items, model.kind, model.hidden


def _write_success(out: Path, summary: dict[str, Any]) -> None:
    write_text_atomic(out / SUCCESS_NAME, json.dumps(summary, indent=2) + "\n")


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
        A bundle exported with the ``onnx`` format. Verified (checksums) on the driver
        and by every worker when it loads it.
    out_dir : path
        Directory to create (its parent must exist), or an existing empty one. Receives
        ``part-{block:06d}.parquet`` per block (columns ``user, rank, item, score``, raw
        ids, exactly like ``Recommender.write_topk``) and ``_SUCCESS`` (JSON) last. On
        a multi-node cluster it must be on a filesystem every worker can write.
    k : int
        ``1 <= k <= n_items``.
    exclude_seen : bool
        Leave out the items each user rated in the training data.
    address : str, optional
        Ray cluster to connect to (``HEAD:6379``, ``ray://HEAD:10001``, ``auto``).
        Default: start a local Ray with every core of this machine and stop it at the
        end. If Ray is already initialised in this process, that instance is used.
    workers : int, optional
        Number of actors (default: the cluster's CPUs // ``cpus_per_worker``).
    block_users : int, optional
        Users per block (default: :func:`default_block_users`).
    progress : bool
        Progress line on stderr (blocks and users done, users/s).
    max_retries : int
        Ray restarts of a dead actor and re-runs of its block (``max_restarts`` and
        ``max_task_retries``).
    cpus_per_worker : int
        CPUs each actor reserves; its onnxruntime session uses as many threads.
    ship_bundle : {"path", "object_store"}
        ``path``: workers load ``bundle_path`` (the same path must exist on every node).
        ``object_store``: the driver puts the bundle's bytes into Ray's object store
        once; each worker writes them to a temporary directory and loads from there.
    overwrite : bool
        Allow a non-empty ``out_dir`` holding a previous output (only ``part-*.parquet``
        and ``_SUCCESS`` files), which is deleted first (the CLI's ``--force``).
    on_block_done : callable, optional
        Called on the driver with each finished block's record (block, start, stop,
        users, rows, file, pid, node, reconstructed, seconds), e.g. for tests.
    device : {None, "cpu", "cuda"}
        None: the actors run the onnxruntime runtime. Otherwise they run the torch
        engine (the bundle's pt2/TorchScript program; torch needed on every worker):
        ``"cuda"`` reserves one GPU per actor (``num_gpus=1``; default ``workers``: the
        cluster's GPUs), ``"cpu"`` runs it on CPU actors. The files are the same.
    providers : list of str, optional
        onnxruntime execution providers, in priority order, of the onnxruntime workers'
        sessions (``device`` None; default ``["CPUExecutionProvider"]``), e.g.
        ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` with ``onnxruntime-gpu``
        on the workers. Checked like ``Recommender.load``'s: on the driver when this
        call starts a local Ray, otherwise by each worker against its own onnxruntime.
        Ray reserves no GPU for these workers (``num_gpus`` stays 0, so Ray leaves
        ``CUDA_VISIBLE_DEVICES`` alone): onnxruntime's CUDA provider puts every worker
        of a node on that node's first GPU; choose ``workers`` accordingly.

    Returns
    -------
    dict
        The summary also stored in ``_SUCCESS``: ``users``, ``blocks``, ``files``
        (names, in block order), ``rows``, ``seconds``, ``workers``, ``block_users``,
        ``k``, ``exclude_seen``, ``bundle``, ``address``, ``ray_version``,
        ``ray_start_seconds`` (0 when Ray was already initialised),
        ``worker_pids``, ``restarted_blocks`` (blocks finished by a restarted actor),
        ``device`` and ``providers`` (the onnxruntime workers' execution providers,
        None for torch-engine workers).

    Raises
    ------
    ConfigError
        Ray not installed, bad options, an unusable ``out_dir``, no cluster at
        ``address``, ``device`` set without torch, or ``"cuda"`` with no GPU in the
        Ray cluster (or a worker without a usable CUDA), ``providers`` with ``device``,
        or an execution provider onnxruntime does not have (on the driver or a worker).
    BundleError
        Missing/corrupted bundle or one without ONNX graphs (on the driver or a worker).
    WorkerError
        A block failed for good (a worker died more than ``max_retries`` times).
    """
    t0 = time.perf_counter()
    ray = _import_ray()
    from ray.util import ActorPool

    check_choice("ship_bundle", ship_bundle, SHIP_MODES)
    max_retries = check_int("max_retries", max_retries, low=0)
    cpus_per_worker = check_int("cpus_per_worker", cpus_per_worker, low=1)
    workers = check_int("workers", workers, low=1, none_ok=True, hint=" (--workers)")
    block_users = check_int("block_users", block_users, low=1, none_ok=True)
    device = _check_device(device)
    # address None and no Ray yet: this call starts a local Ray, whose workers import
    # this machine's onnxruntime, so a bad name fails here, before Ray starts
    providers = _check_providers(
        providers, device, starts_local_ray=address is None and not ray.is_initialized()
    )
    bundle = Bundle.load(bundle_path, verify=True)
    n_users, n_items, kind, hidden = _model_sizes(bundle, device)
    k = check_k(k, n_items)
    out = _prepare_out_dir(out_dir, overwrite)
    payload = _bundle_payload(bundle) if ship_bundle == "object_store" else None

    started = False
    actors: list[Any] = []
    shipped: list[Any] | None = None  # [ObjectRef of the bundle's bytes, job token]
    t_ray = time.perf_counter()
    if not ray.is_initialized():
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
        started = True
    ray_start_seconds = time.perf_counter() - t_ray
    try:
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
        if block_users is None:
            block_users = default_block_users(n_users, n_items, workers, kind=kind, hidden=hidden)
        bounds = [(s, min(s + block_users, n_users)) for s in range(0, n_users, block_users)]
        workers = max(1, min(workers, len(bounds)))  # never more actors than blocks

        if payload is not None:
            shipped = [ray.put(payload), secrets.token_hex(8)]
        actor_cls = ray.remote(BlockScorer).options(
            num_cpus=cpus_per_worker,
            num_gpus=1 if device == "cuda" else 0,
            max_restarts=max_retries,
            max_task_retries=max_retries,
        )
        actors += [
            actor_cls.remote(
                str(bundle.root),
                str(out),
                k,
                exclude_seen,
                cpus_per_worker,
                shipped,
                device,
                providers,
            )
            for _ in range(workers)
        ]
        infos = ray.get([a.info.remote() for a in actors])
        for info in infos:
            if info["error"] is not None:
                name, msg = info["error"]
                raise _error_class(name)(f"Ray worker (pid {info['pid']}): {msg}")

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
        missing = [j for j in range(len(bounds)) if j not in records]
        files = [PART_PATTERN.format(block=j) for j in range(len(bounds))]
        absent = [f for f in files if not (out / f).is_file()]
        if missing or absent:  # cannot happen unless someone deletes files under us
            raise WorkerError(
                f"output {out} is incomplete (blocks {missing[:5]}, files {absent[:5]} "
                "missing); rerun with --force"
            )
        for stray in out.iterdir():  # temporaries of killed attempts
            if stray.name.startswith(".part-"):
                try:
                    stray.unlink()
                except OSError:
                    pass
        summary: dict[str, Any] = {
            "users": n_users,
            "blocks": len(bounds),
            "files": files,
            "rows": int(sum(r["rows"] for r in records.values())),
            "seconds": round(time.perf_counter() - t0, 3),
            "ray_start_seconds": round(ray_start_seconds, 3),
            "workers": workers,
            "cpus_per_worker": cpus_per_worker,
            "block_users": block_users,
            "k": k,
            "exclude_seen": exclude_seen,
            "bundle": str(bundle.root),
            "ship_bundle": ship_bundle,
            "device": device,
            "gpus": gpus,
            "providers": infos[0]["providers"],
            "address": address,
            "ray_version": ray.__version__,
            "worker_pids": sorted({r["pid"] for r in records.values()}),
            "restarted_blocks": sorted(j for j, r in records.items() if r["reconstructed"]),
        }
        _write_success(out, summary)
        return summary
    finally:
        if shipped is not None and actors:  # delete the nodes' copies of the bundle
            try:
                ray.get([a.release.remote() for a in actors], timeout=60)
            except Exception:
                pass
        for a in actors:  # free their CPUs in a Ray instance that outlives this call
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        if started:
            ray.shutdown()
