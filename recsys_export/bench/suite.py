"""Side-by-side benchmark of every way to serve the models, in one process.

``recsys-export bench`` (or ``python benchmarks/bench.py``) builds a synthetic MF and a
synthetic DenseNet of the chosen size (``--users --items --factors --hidden``, or
``--preset full`` = 100k users x 20k items, 64 factors, 128 hidden), exports each to a
temporary bundle (every format, ``.pt2`` included, with its approximate variants: MF
int8 and fp16, DenseNet fp16; parity check off) and times, for each model (the rows:
:mod:`recsys_export.bench.rows`; the bare graphs, built at the bundles' opset and IR
version: :mod:`recsys_export.bench.graphs`):

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
  :class:`~recsys_export.torch_runtime.engine.TorchEngine`, on ``cuda``: score_all of every
  user; in ``recommend_all`` top-k with exclusions) next to ``gpu_ceiling`` (a bare
  ``torch.matmul``, + ``torch.topk``, of the same shape in the same blocks), timed in
  the same run (:mod:`recsys_export.bench.gpu`); their ratios are to ``gpu_ceiling``.
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

from recsys_export.bench.config import (
    BenchConfig,
    add_arguments,
    config_from_args,
)
from recsys_export.bench.report import format_table, plot
from recsys_export.bench.timing import row
from recsys_export.core.defaults import MODEL_KINDS
from recsys_export.errors import RecsysExportError

__all__ = ["main", "run"]

#: The approximate variants each model's bundle is exported with (``--skip precision``:
#: none): MF int8 and fp16, DenseNet fp16 (int8 is MF-only).
PRECISIONS = {"mf": "fp16,int8", "densenet": "fp16"}
#: Device of the GPU rows (tests point it at the CPU to run that code path).
_GPU_DEVICE = "cuda"


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
    from recsys_export.models.synthetic import synthetic_checkpoint

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
        "export_seconds": dict(manifest.timings.export_seconds),
        "export_total_seconds": total,
    }


def _train(path: str, epochs: int, factors: int, hidden: int) -> dict[str, Any]:
    from recsys_export import data
    from recsys_export.training.config import TrainConfig
    from recsys_export.training.fit import fit

    ratings = data.read_ratings(path)
    train, valid = data.random_split(ratings, 0.2, seed=0)
    out = {}
    for kind in MODEL_KINDS:
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
    from recsys_export.bench.rows import bench_model

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
    sections (:func:`recsys_export.bench.gpu.device_timings` on :data:`_GPU_DEVICE`)."""
    from recsys_export.bench.gpu import device_timings

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
        from recsys_export.bench.gpu import cuda_unavailable_reason
    except Exception as exc:  # torch without a working torch engine
        return {"skipped": f"the torch engine does not import ({exc})"}
    if _GPU_DEVICE == "cuda":
        why = cuda_unavailable_reason()
        if why is not None:
            return {"skipped": why}
        import torch

        return {"device": "cuda", "name": torch.cuda.get_device_name(0)}
    return {"device": _GPU_DEVICE, "name": _GPU_DEVICE}


def run(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark ``config`` describes; print the table, write the JSON report (and
    the chart with ``config.plot``) and return the report.

    Raises
    ------
    ConfigError
        A bad size, model, row group or ``k`` (:meth:`BenchConfig.sizes`).
    """
    sizes = config.sizes()  # a bad option fails before the heavy imports
    import onnx
    import onnxruntime
    import torch

    skip = list(config.skip)
    gpu = _gpu_status(skip)
    if "skipped" in gpu:
        print(f"recsys-export bench: GPU rows skipped: {gpu['skipped']}", file=sys.stderr)
    cfg = {
        **sizes,
        "gpu_skipped": gpu.get("skipped"),
        "k": config.k,
        "repeat": config.repeat,
        "calls": config.calls,
        "skip": skip,
        "slow_users": config.slow,
        "threads": config.threads or os.cpu_count() or 1,
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
        "config": {**cfg, "preset": config.preset, "seen": config.seen, "train": config.train},
        "gpu": gpu,
        "models": {},
    }
    trained = (
        _train(config.train, config.epochs, sizes["factors"], sizes["hidden"])
        if config.train
        else {}
    )
    with tempfile.TemporaryDirectory(prefix="recsys_bench_") as tmp:
        for kind in config.models:
            res = _model_report(kind, cfg, config.seen, Path(tmp))
            res["train"] = trained.get(kind)
            report["models"][kind] = res
    report["machine"]["loadavg_end"] = _loadavg()
    print(format_table(report))
    json_path = config.json_path
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    print(f"\nJSON written to {json_path}")
    if config.plot is not None:
        print(plot(report, config.plot))
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m recsys_export.bench``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    try:
        run(config_from_args(parser.parse_args(argv)))
    except RecsysExportError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
