"""GPU check of the torch batch engine (issue #19): build, run, compare, report.

Builds synthetic MF and DenseNet bundles (100k users x 20k items, 64 factors, 128
hidden; ``--tiny``: 300 x 400, 16 / 32) with every format, ``.pt2`` included (opt-in in
``export``; the torch engine prefers the pt2 program, and the parity check below covers
it), then for each model times

* the torch engine (:class:`recsys_export.torch_runtime.engine.TorchEngine`) on ``--device``:
  score_all over every user (device only), the ``.npy`` matrix and the top-k Parquet
  end to end, and top-k for every user on the device (no writing);
* a bare ``torch.matmul`` + ``torch.topk`` ceiling of the same shape on the same device
  (``[users, factors + 2] x [factors + 2, items]`` in the engine's blocks), in the same run;
* the onnxruntime CPU runtime writing the same two files;

compares the engine's files with the runtime's (matrix within 1e-5; top-k items equal
except among ties, scores within 1e-5), then runs the parity check of the torch side on
the device (``verify --device DEVICE --formats torchscript,pt2,torch_engine``: the eager
reference, TorchScript, ``.pt2`` and the torch engine on the device, over a plan of
``--verify-budget`` pairs; ``--no-verify`` skips it), prints a table and writes JSON.
With ``--ray`` it also runs the Ray engine with torch workers on the same device
(``score --all --engine ray --device cuda``: one worker per GPU) and with onnxruntime
workers given execution providers (``--engine ray --providers
CUDAExecutionProvider,CPUExecutionProvider`` where this onnxruntime has the CUDA
provider and the device is CUDA, ``CPUExecutionProvider`` on ``--device cpu``; skipped
with the reason otherwise), and compares their Parquet parts with the runtime's top-k::

    python benchmarks/gpu_check.py --device cuda --ray      # full size
    python benchmarks/gpu_check.py --tiny --device cpu      # seconds, what CI runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from recsys_export.bench.gpu import device_timings
from recsys_export.bench.suite import _synthetic
from recsys_export.runtime import Recommender

SIZES = {
    "full": {"users": 100_000, "items": 20_000, "factors": 64, "hidden": 128},
    "tiny": {"users": 300, "items": 400, "factors": 16, "hidden": 32},
}
ATOL = 1e-5


def _compare_matrix(a_path: Path, b_path: Path) -> float:
    a = np.load(a_path, mmap_mode="r")
    b = np.load(b_path, mmap_mode="r")
    assert a.shape == b.shape, (a.shape, b.shape)
    worst = 0.0
    for s in range(0, a.shape[0], 4096):
        worst = max(worst, float(np.max(np.abs(a[s : s + 4096] - b[s : s + 4096]))))
    return worst


def _compare_topk(a_path: Path, b_path: Path) -> tuple[bool, float, int]:
    """(items equal except among tied scores, max score diff, rank positions that differ)."""
    order = [("user", "ascending"), ("rank", "ascending")]  # a directory of parts too
    a = pq.read_table(a_path).sort_by(order)
    b = pq.read_table(b_path).sort_by(order)
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False, float("inf"), -1
    ua, ub = a["user"].to_numpy(), b["user"].to_numpy()
    ra, rb = a["rank"].to_numpy(), b["rank"].to_numpy()
    if not (np.array_equal(ua, ub) and np.array_equal(ra, rb)):
        return False, float("inf"), -1
    sa = a["score"].to_numpy().astype(np.float64)
    sb = b["score"].to_numpy().astype(np.float64)
    ia, ib = np.asarray(a["item"].to_pylist()), np.asarray(b["item"].to_pylist())
    diff = float(np.max(np.abs(sa - sb))) if sa.size else 0.0
    differ = ia != ib
    # a reordering is only allowed among tied scores (same score, within tolerance)
    ok = bool(np.all(np.abs(sa[differ] - sb[differ]) <= ATOL))
    return ok and diff <= ATOL, diff, int(differ.sum())


def check_model(
    kind: str, cfg: dict[str, Any], device: torch.device, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Build one bundle, run engine / ceiling / CPU runtime, compare the outputs."""
    built = _synthetic(kind, {**cfg, "k": args.k}, args.seen, work)
    bundle = built["bundle"]
    row: dict[str, Any] = {"export_seconds": built["export_total_seconds"]}
    budget = None if device.type == "cuda" else args.memory_mb
    timed = device_timings(
        bundle,
        device,
        k=args.k,
        width=cfg["factors"] + 2,
        repeat=args.repeat,
        memory_budget_mb=budget,
    )
    eng = timed["engine"]
    row["engine_load_s"] = timed["load_s"]
    row["engine_source"] = eng.source
    row["engine_block_users"] = timed["block_users"]
    for name in ("engine_score_all", "engine_topk", "ceiling_score_all", "ceiling_topk"):
        row[f"{name}_s"] = min(timed[name])  # best of the timed runs
    out = work / f"{kind}-out"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    eng.write_score_matrix(out / "engine.npy", memory_budget_mb=budget, progress=False)
    row["engine_npy_end_to_end_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng.write_topk(out / "engine.parquet", k=args.k, memory_budget_mb=budget, progress=False)
    row["engine_parquet_end_to_end_s"] = time.perf_counter() - t0
    rec = Recommender.load(bundle)
    t0 = time.perf_counter()
    rec.write_score_matrix(out / "runtime.npy", progress=False)
    row["runtime_npy_end_to_end_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec.write_topk(out / "runtime.parquet", k=args.k, progress=False)
    row["runtime_parquet_end_to_end_s"] = time.perf_counter() - t0
    row["matrix_max_abs_diff"] = _compare_matrix(out / "engine.npy", out / "runtime.npy")
    match, sdiff, moved = _compare_topk(out / "engine.parquet", out / "runtime.parquet")
    row["topk_items_match"] = match
    row["topk_max_score_diff"] = sdiff
    row["topk_positions_reordered_in_ties"] = moved
    row["engine_vs_ceiling_topk"] = row["engine_topk_s"] / row["ceiling_topk_s"]
    if args.verify:
        row.update(_verify_check(bundle, device, args.verify_budget))
    if args.ray:
        row.update(_ray_check(bundle, device, out, work / f"{kind}-ray", args.k))
        row.update(_ray_providers_check(bundle, device, out, work / f"{kind}-ray-ort", args.k))
    for f in out.iterdir():  # full-size outputs are GBs: keep only the report
        f.unlink()
    return row


def _ray_check(bundle: Path, device: Any, ref: Path, out: Path, k: int) -> dict[str, Any]:
    """The Ray engine with torch workers on ``device``'s type; its parts vs ``ref``."""
    import shutil

    from recsys_export.scale import score_topk_ray

    t0 = time.perf_counter()
    summary = score_topk_ray(bundle, out, k=k, device=device.type, progress=False, overwrite=True)
    row: dict[str, Any] = {
        "ray_parquet_end_to_end_s": time.perf_counter() - t0,
        "ray_workers": summary["workers"],
        "ray_gpus": summary["gpus"],
    }
    match, sdiff, _moved = _compare_topk(out, ref / "runtime.parquet")
    row["ray_topk_items_match"] = match
    row["ray_topk_max_score_diff"] = sdiff
    shutil.rmtree(out, ignore_errors=True)
    return row


#: What ``verify --device`` moves to the device (onnx and runtime stay on onnxruntime).
VERIFY_FORMATS = ("torchscript", "pt2", "torch_engine")


def _verify_check(bundle: Path, device: Any, budget: int) -> dict[str, Any]:
    """``verify --device``: the torch side's parity on ``device`` (nothing recorded)."""
    from recsys_export.parity import verify_bundle

    t0 = time.perf_counter()
    report = verify_bundle(
        bundle, device=str(device), formats=VERIFY_FORMATS, budget=budget, record=False
    )
    rows = report.rows()
    return {
        "verify_seconds": time.perf_counter() - t0,
        "verify_device": report.device,
        "verify_passed": report.passed,
        "verify_max_abs_diff": max((r["max_abs_diff"] for r in rows), default=0.0),
        "verify_failed": [f"{r['format']}:{r['entry_point']}" for r in rows if not r["passed"]],
        "verify_plan_users": (report.plan or {}).get("users"),
    }


def _ray_providers_check(bundle: Path, device: Any, ref: Path, out: Path, k: int) -> dict[str, Any]:
    """The Ray engine's onnxruntime workers with execution providers; parts vs ``ref``."""
    import shutil

    import onnxruntime as ort

    from recsys_export.scale import score_topk_ray

    if device.type == "cpu":
        providers = ["CPUExecutionProvider"]
    elif "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        return {
            "ray_ort_skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
            f"({', '.join(ort.get_available_providers())}): install onnxruntime-gpu"
        }
    t0 = time.perf_counter()
    summary = score_topk_ray(
        bundle, out, k=k, providers=providers, workers=2, progress=False, overwrite=True
    )
    match, sdiff, _moved = _compare_topk(out, ref / "runtime.parquet")
    shutil.rmtree(out, ignore_errors=True)
    return {
        "ray_ort_parquet_end_to_end_s": time.perf_counter() - t0,
        "ray_ort_providers": summary["providers"],
        "ray_ort_topk_items_match": match,
        "ray_ort_topk_max_score_diff": sdiff,
    }


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the report's timings (seconds) and checks."""
    cols = [
        ("engine score_all", "engine_score_all_s"),
        ("ceiling matmul", "ceiling_score_all_s"),
        ("engine top-k", "engine_topk_s"),
        ("ceiling matmul+topk", "ceiling_topk_s"),
        ("engine .npy", "engine_npy_end_to_end_s"),
        ("engine .parquet", "engine_parquet_end_to_end_s"),
        ("runtime .npy", "runtime_npy_end_to_end_s"),
        ("runtime .parquet", "runtime_parquet_end_to_end_s"),
    ]
    lines = [
        f"device {report['device']} ({report['device_name']}), {report['size']} "
        f"{report['config']['users']} x {report['config']['items']}, top-{report['k']}",
        f"{'':24}" + "".join(f"{m:>12}" for m in report["models"]),
    ]
    models = list(report["models"].values())

    def row(label: str, key: str, spec: str) -> None:
        lines.append(f"{label:24}" + "".join(f"{format(r[key], spec):>12}" for r in models))

    for label, key in cols:
        row(label + " (s)", key, ".4f")
    row("engine/ceiling top-k", "engine_vs_ceiling_topk", ".2f")
    row("matrix max |diff|", "matrix_max_abs_diff", ".1e")
    row("top-k identical", "topk_items_match", "")
    if all("verify_passed" in r for r in models):
        row("verify on device", "verify_passed", "")
        row("verify max |diff|", "verify_max_abs_diff", ".1e")
        row("verify (s)", "verify_seconds", ".4f")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every output matches the CPU runtime's, else 1."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="300 x 400 models (seconds, for CI)")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu|cuda[:N]"
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seen", type=int, default=20, help="seen items per user")
    p.add_argument("--repeat", type=int, default=3, help="timed runs (best is kept)")
    p.add_argument("--memory-mb", type=float, default=256, help="CPU block budget")
    p.add_argument("--workdir", type=Path, default=None, help="bundles and outputs")
    p.add_argument("--json", type=Path, default=Path(".bench/gpu_check.json"))
    p.add_argument(
        "--ray",
        action="store_true",
        help="also run --engine ray with torch workers and with onnxruntime workers given "
        "--providers (needs ray)",
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip verify --device (the torch side's parity on the device)",
    )
    p.add_argument(
        "--verify-budget",
        type=int,
        default=1_000_000,
        help="pairs of the verify plan (default 1,000,000: a sample of users at full size)",
    )
    args = p.parse_args(argv)
    size = "tiny" if args.tiny else "full"
    cfg = SIZES[size]
    from recsys_export.torch_runtime.device import resolve_device

    device = resolve_device(args.device)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": size,
        "config": cfg,
        "k": args.k,
        "seen_per_user": args.seen,
        "models": {},
    }
    for kind in ("mf", "densenet"):
        report["models"][kind] = check_model(kind, cfg, device, work, args)
    print(format_table(report))
    if args.verify:
        for kind, r in report["models"].items():
            if r["verify_failed"]:
                print(
                    f"verify {kind} on {r['verify_device']}: FAIL {', '.join(r['verify_failed'])}"
                )
    if args.ray:
        for kind, r in report["models"].items():
            print(
                f"ray {kind}: {r['ray_workers']} workers ({r['ray_gpus']} GPUs), "
                f"{r['ray_parquet_end_to_end_s']:.2f} s, top-k identical "
                f"{r['ray_topk_items_match']} (max score diff {r['ray_topk_max_score_diff']:.1e})"
            )
            if "ray_ort_skipped" in r:
                print(f"ray {kind} onnxruntime providers: skipped, {r['ray_ort_skipped']}")
            else:
                print(
                    f"ray {kind} onnxruntime workers ({','.join(r['ray_ort_providers'])}): "
                    f"{r['ray_ort_parquet_end_to_end_s']:.2f} s, top-k identical "
                    f"{r['ray_ort_topk_items_match']} (max score diff "
                    f"{r['ray_ort_topk_max_score_diff']:.1e})"
                )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    ok = all(
        r["topk_items_match"]
        and r["matrix_max_abs_diff"] <= ATOL
        and r.get("ray_topk_items_match", True)
        and r.get("ray_ort_topk_items_match", True)
        and r.get("verify_passed", True)
        for r in report["models"].values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
