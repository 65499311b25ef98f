"""Side-by-side benchmark of every way to serve the models, in one process.

``recsys-export bench`` (or ``python benchmarks/bench.py``) builds a synthetic MF and a
synthetic DenseNet of the chosen size (``--users --items --factors --hidden``, or
``--preset full`` = 100k users x 20k items, 64 factors, 128 hidden), exports each to a
temporary bundle (every format, ``.pt2`` included, with its approximate variants: MF
int8 and fp16, DenseNet fp16; parity check off) and times, for each model (the rows:
:mod:`recsys_export.bench_rows`; the bare graphs, built at the bundles' opset and IR
version: :mod:`recsys_export.bench_graphs`):

* ``score_all`` of every user (rows below), in blocks, outputs preallocated where the
  API allows:

  - ``ceiling``: a bare onnxruntime graph of the same math built with ``onnx.helper``
    (MF: ``MatMul`` of ``[B, f] x [f, N]``, the best of a few block sizes with intra-op
    threads and with one single-threaded session per Python thread; DenseNet: the
    ``Max`` + ``MatMul`` item tiles of the runtime's kernel in one graph on precomputed
    user halves, 8 users per call, the faster of Python threads and intra-op threads).
    Ratios are to this row.
  - ``numpy``: MF ``P @ Q^T + bu + bi`` into a preallocated block; DenseNet the same
    max-rewrite tiles in numpy.
  - ``torch_eager``: the trained model's ``score_all``; ``torchscript`` and ``pt2``:
    the bundle's TorchScript module and ``torch.export`` program.
  - ``runtime``: :class:`recsys_export.runtime.Recommender` (fast-path kernels; for
    DenseNet one Python thread per core, and ``runtime_intra_op``: one caller thread
    with onnxruntime's intra-op threads instead), ``runtime_<precision>``: the bundle's
    approximate variants, and ``runtime_fallback``: the same bundle on its entry-point
    graphs only (what older bundles get).

* ``recommend_all``: top-``k`` (default 10) of every user with ``--seen`` (default 50)
  random seen items excluded: ``runtime`` (MF: the threshold top-k over the
  ``score_groups`` kernel), ``runtime_topk_kernel`` (MF: the same lists through scores
  masked in numpy and the TopK kernel, as before the threshold path),
  ``runtime_<precision>``, ``runtime_fallback`` and ``numpy`` (score, mask,
  ``argpartition``). Ratios are to the score_all ceiling.
* ``single_user``: ``recommend(user, k)`` latency, p50/p99 over ``--calls`` (>= 2000)
  random users: ``ceiling`` (MF: a bare one-row MatMul + TopK graph on the user's
  factors), ``runtime`` by index and by raw id, ``runtime_<precision>``,
  ``runtime_fallback``, ``torch_eager`` and ``implicit`` (MF: the implicit library's
  ``recommend`` on the same factors, when it is installed: it is no dependency).
* GPU rows, when torch sees a CUDA device: ``gpu_torch_engine`` (the torch engine,
  :class:`~recsys_export.torch_engine.TorchEngine`, on ``cuda``: score_all of every
  user; in ``recommend_all`` top-k with exclusions) next to ``gpu_ceiling`` (a bare
  ``torch.matmul``, + ``torch.topk``, of the same shape in the same blocks), timed in
  the same run (:mod:`recsys_export.torch_bench`); their ratios are to ``gpu_ceiling``.
  Without CUDA they are left out with a one-line message, and the JSON's ``gpu`` says
  why.
* export time per format, process peak RSS (``ru_maxrss``, torch included), and with
  ``--train DATA`` the training time and validation RMSE of both models (80/20 split).

Slow rows can be measured on the first ``--slow-users`` users only (the row records how
many users it covered; per-pair numbers stay comparable): DenseNet's numpy, torch and
fallback rows (the eager model builds a ``[B, N, H]`` intermediate) and the numpy
recommend-all row of both models. ``--skip torch,torchscript,pt2,numpy,fallback,gpu,
precision,implicit`` drops rows.
Every row is run ``--repeat`` times (median reported, min/max kept), in rounds: after a
warm-up, each round runs every row of a section once, so a slow drift of the machine's
speed affects the rows and the ceiling alike. The machine may be
shared: the JSON records the load average before and after.

FLOPs per (user, item) pair: MF ``2 * (factors + 2)`` (the augmented dot product);
DenseNet ``3 * hidden`` (max, multiply, add of the rewritten second layer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.bench_report import SCHEMA, format_table, plot
from recsys_export.bench_timing import row

__all__ = ["SCHEMA", "add_arguments", "format_table", "main", "plot", "run"]

PRESETS = {
    "tiny": {"users": 300, "items": 400, "factors": 16, "hidden": 32},
    "full": {"users": 100_000, "items": 20_000, "factors": 64, "hidden": 128},
}
ROW_GROUPS = ("torch", "torchscript", "pt2", "numpy", "fallback", "gpu", "precision", "implicit")
#: The approximate variants each model's bundle is exported with (``--skip precision``:
#: none): MF int8 and fp16, DenseNet fp16 (int8 is MF-only).
PRECISIONS = {"mf": "fp16,int8", "densenet": "fp16"}
#: Device of the GPU rows (tests point it at the CPU to run that code path).
_GPU_DEVICE = "cuda"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recsys-export bench``."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="sizes: tiny (seconds) or full (100k x 20k, 64 factors, 128 hidden)",
    )
    parser.add_argument("--users", type=int, default=None, help="override the preset")
    parser.add_argument("--items", type=int, default=None, help="override the preset")
    parser.add_argument("--factors", type=int, default=None, help="override the preset")
    parser.add_argument("--hidden", type=int, default=None, help="DenseNet hidden units")
    parser.add_argument("--models", default="mf,densenet", help="comma list: mf,densenet")
    parser.add_argument("--seen", type=int, default=50, help="excluded items per user")
    parser.add_argument("--k", type=int, default=10, help="top-k size")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median)")
    parser.add_argument("--calls", type=int, default=2000, help="single-user calls")
    parser.add_argument(
        "--slow-users",
        type=int,
        default=None,
        help="measure torch/numpy/fallback DenseNet rows on this many users (default: "
        "all for tiny, 2000 for full)",
    )
    parser.add_argument(
        "--skip", default="", help=f"comma list of row groups to skip: {','.join(ROW_GROUPS)}"
    )
    parser.add_argument("--threads", type=int, default=None, help="threads (default: nproc)")
    parser.add_argument("--train", default=None, metavar="DATA", help="also train on DATA")
    parser.add_argument("--epochs", type=int, default=5, help="epochs with --train")
    parser.add_argument(
        "--json", type=Path, default=None, help="JSON report (default .bench/bench-<preset>.json)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="PNG chart (needs matplotlib)")


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- models
def _synthetic(
    kind: str, cfg: dict[str, Any], seen: int, work: Path, precision: str = "fp32"
) -> dict[str, Any]:
    """Build a synthetic model and export it (every format, ``precision``'s variants, no
    parity pass)."""
    from recsys_export.export import export_bundle
    from recsys_export.synthetic_models import synthetic_checkpoint

    n_items = cfg["items"]
    per_user = min(seen, max(0, n_items - cfg["k"]))
    ck = synthetic_checkpoint(
        kind,
        cfg["users"],
        n_items,
        factors=cfg["factors"],
        hidden=cfg.get("hidden", 16),
        seen_per_user=per_user,
    )
    model = ck.model
    dest = work / kind
    t0 = time.perf_counter()
    # pt2 is opt-in: asked for, as the pt2 rows and gpu_check.py's torch engine use it
    manifest = export_bundle(ck, dest, formats="all", verify=False, precision=precision)
    total = time.perf_counter() - t0
    return {
        "model": model,
        "bundle": dest,
        "export_seconds": manifest["timings"]["export_seconds"],
        "export_total_seconds": total,
    }


def _train(path: str, epochs: int, factors: int, hidden: int) -> dict[str, Any]:
    from recsys_export import data
    from recsys_export.train import TrainConfig, fit

    ratings = data.read_ratings(path)
    train, valid = data.random_split(ratings, 0.2, seed=0)
    out = {}
    for kind in ("mf", "densenet"):
        cfg = TrainConfig(model=kind, n_factors=factors, hidden=hidden, epochs=epochs)
        t0 = time.perf_counter()
        _, history = fit(train, valid, cfg, progress=False)
        out[kind] = {
            "seconds": time.perf_counter() - t0,
            "rmse": float(min(history.valid_rmse)) if history.valid_rmse else None,
            "epochs": len(history.valid_rmse),
            "data": str(path),
        }
    return out


def _model_report(kind: str, cfg: dict[str, Any], seen: int, work: Path) -> dict[str, Any]:
    """Export one synthetic model (with its precision variants) and measure every row."""
    from recsys_export.bench_rows import bench_model

    precision = "fp32" if "precision" in cfg["skip"] else PRECISIONS[kind]
    built = _synthetic(kind, cfg, seen, work, precision=precision)
    res = bench_model(kind, cfg, built)
    if cfg.get("gpu_skipped") is None:  # a CUDA device is visible (run() checked)
        _gpu_rows(
            kind,
            cfg,
            built["bundle"],
            res["score_all"],
            res["recommend_all"],
            res["flops_per_pair"],
        )
        res["notes"].append(
            "gpu_* rows: the torch engine on the device (score_all; top-k with exclusions) "
            "and a bare torch.matmul (+ topk) of width "
            f"{_gpu_width(kind, cfg)}; their x ceil is to gpu_ceiling"
        )
    n_users, n_items = cfg["users"], cfg["items"]
    return {
        "sizes": {
            "users": n_users,
            "items": n_items,
            "factors": cfg["factors"],
            **({"hidden": cfg["hidden"]} if kind == "densenet" else {}),
            "pairs": n_users * n_items,
        },
        "flops_per_pair": res["flops_per_pair"],
        "export_seconds": built["export_seconds"],
        "export_total_seconds": built["export_total_seconds"],
        "train": None,
        "peak_rss_mib": _rss_mib(),
        "score_all": res["score_all"],
        "recommend_all": res["recommend_all"],
        "single_user": res["single_user"],
        "notes": res["notes"],
    }


def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, as ``lscpu`` shows it), or the platform's."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def _gpu_width(kind: str, cfg: dict[str, Any]) -> int:
    """Inner dimension of the GPU ceiling's matmul: MF's augmented factors, DenseNet's
    hidden layer (a lower bound on its work)."""
    return int(cfg["factors"]) + 2 if kind == "mf" else int(cfg["hidden"])


def _gpu_rows(
    kind: str,
    cfg: dict[str, Any],
    bundle: Path,
    score: dict[str, Any],
    recs: dict[str, Any],
    flops: int,
) -> None:
    """Add ``gpu_ceiling`` and ``gpu_torch_engine`` rows to the score_all and recommend_all
    sections (:func:`recsys_export.torch_bench.device_timings` on :data:`_GPU_DEVICE`)."""
    from recsys_export.torch_bench import device_timings

    t = device_timings(
        bundle, _GPU_DEVICE, k=cfg["k"], width=_gpu_width(kind, cfg), repeat=cfg["repeat"]
    )
    eng = t["engine"]
    for table, name in ((score, "score_all"), (recs, "topk")):
        ceil = row(t[f"ceiling_{name}"], eng.n_users, eng.n_items, flops)
        ours = row(t[f"engine_{name}"], eng.n_users, eng.n_items, flops)
        ceil["ratio_to_ceiling"] = 1.0
        ours["ratio_to_ceiling"] = ours["ns_per_pair"] / ceil["ns_per_pair"]
        ours["device"] = ceil["device"] = str(eng.device)
        table["gpu_ceiling"] = ceil
        table["gpu_torch_engine"] = ours


def _gpu_status(skip: list[str]) -> dict[str, Any]:
    """``{"device", "name"}`` of the GPU rows' device, or ``{"skipped": why}``."""
    if "gpu" in skip:
        return {"skipped": "--skip gpu"}
    try:
        from recsys_export.torch_bench import cuda_unavailable_reason
    except Exception as exc:  # torch without a working torch engine
        return {"skipped": f"the torch engine does not import ({exc})"}
    if _GPU_DEVICE == "cuda":
        why = cuda_unavailable_reason()
        if why is not None:
            return {"skipped": why}
        import torch

        return {"device": "cuda", "name": torch.cuda.get_device_name(0)}
    return {"device": _GPU_DEVICE, "name": _GPU_DEVICE}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`add_arguments`)."""
    import onnx
    import onnxruntime
    import torch

    sizes = dict(PRESETS[args.preset])
    for key in ("users", "items", "factors", "hidden"):
        if getattr(args, key) is not None:
            sizes[key] = int(getattr(args, key))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    bad = [m for m in models if m not in ("mf", "densenet")] + [
        s for s in skip if s not in ROW_GROUPS
    ]
    if bad or not models or min(sizes.values()) < 1 or args.k < 1 or args.k > sizes["items"]:
        print(f"recsys-export bench: bad options {bad or sizes}", file=sys.stderr)
        return 2
    slow = args.slow_users
    if slow is None:
        slow = 2000 if args.preset == "full" else 0
    gpu = _gpu_status(skip)
    if "skipped" in gpu:
        print(f"recsys-export bench: GPU rows skipped: {gpu['skipped']}", file=sys.stderr)
    cfg = {
        **sizes,
        "gpu_skipped": gpu.get("skipped"),
        "k": args.k,
        "repeat": max(1, args.repeat),
        "calls": args.calls,
        "skip": skip,
        "slow_users": slow,
        "threads": args.threads or os.cpu_count() or 1,
    }
    report: dict[str, Any] = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": _cpu_name(),
            "loadavg_start": _loadavg(),
            "python": platform.python_version(),
            "versions": {
                "numpy": np.__version__,
                "onnxruntime": onnxruntime.__version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
            },
        },
        "config": {**cfg, "preset": args.preset, "seen": args.seen, "train": args.train},
        "gpu": gpu,
        "models": {},
    }
    trained = (
        _train(args.train, args.epochs, sizes["factors"], sizes["hidden"]) if args.train else {}
    )
    with tempfile.TemporaryDirectory(prefix="recsys_bench_") as tmp:
        for kind in models:
            res = _model_report(kind, cfg, args.seen, Path(tmp))
            res["train"] = trained.get(kind)
            report["models"][kind] = res
    report["machine"]["loadavg_end"] = _loadavg()
    print(format_table(report))
    json_path = args.json or Path(".bench") / f"bench-{args.preset}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    print(f"\nJSON written to {json_path}")
    if args.plot is not None:
        print(plot(report, args.plot))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m recsys_export.bench``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
