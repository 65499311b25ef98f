"""``verify`` and ``inspect``: a bundle checked against the eager model, and described."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsys_export.cli.options import (
    Command,
    add_options,
    add_plan_options,
    add_tolerance_options,
    comma_list,
    opt,
    parity_options,
)

VERIFY_FORMATS_HELP = (
    "subset of onnx,torchscript,pt2,runtime,torch_engine to check (default: "
    "every format the bundle holds, and runtime; not torch_engine; 'all' is "
    "onnx,torchscript,pt2; 'runtime' is the Python onnxruntime runtime with its "
    "fast-path graphs, 'torch_engine' the torch batch engine of score --engine torch, "
    "on --device)"
)
DEVICE_OPTIONS = (
    opt(
        "--device",
        default=None,
        help="cpu or cuda[:N]: where the torch side runs (the eager reference, TorchScript, "
        "pt2, torch_engine; default cpu); the onnx/runtime checks use --providers. In "
        "parity.json and the table",
    ),
    opt(
        "--providers",
        type=comma_list,
        help="comma list of onnxruntime execution providers of the onnx and runtime "
        "checks, in priority order (default CPUExecutionProvider; e.g. "
        "CUDAExecutionProvider,CPUExecutionProvider with onnxruntime-gpu)",
    ),
)
RECORD_OPTIONS = (
    opt(
        "--record",
        action="store_true",
        help="write parity.json into the bundle and the summary into its manifest (the "
        "bundle is rewritten atomically; refused if it is read-only). Without it the "
        "bundle is only read: --json > FILE keeps the report beside it",
    ),
    opt(
        "--no-record",
        dest="record",
        action="store_false",
        help="read the bundle only (the default; the opposite of --record)",
    ),
    opt("--json", action="store_true", help="print the full report as JSON"),
    opt("-q", "--quiet", action="store_true", help="no progress bar"),
)


def add_verify_options(p: argparse.ArgumentParser) -> None:
    """The options of ``verify``."""
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="compare with this checkpoint instead of the bundle's reference weights",
    )
    p.add_argument("--formats", help=VERIFY_FORMATS_HELP)
    add_tolerance_options(p)
    add_options(p, DEVICE_OPTIONS)
    add_plan_options(p, quick=True)
    add_options(p, RECORD_OPTIONS)


def add_inspect_options(p: argparse.ArgumentParser) -> None:
    """The options of ``inspect``."""
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _verify_formats(text: str | None) -> list[str] | None:
    """--formats of verify: export formats plus ``runtime`` (the Python runtime) and
    ``torch_engine`` (the torch batch engine on the CPU)."""
    if not text:
        return None
    from recsys_export.export import parse_formats

    names = [f.strip() for f in text.split(",") if f.strip()]
    extra = [f for f in ("runtime", "torch_engine") if f in names]
    rest = [f for f in names if f not in extra]
    return (parse_formats(rest) if rest else []) + extra


def cmd_verify(args: argparse.Namespace) -> int:
    """``recsys-export verify``: parity of a bundle; exit 1 when it fails."""
    from recsys_export.errors import BundleError
    from recsys_export.parity import verify_bundle

    try:
        report = verify_bundle(
            args.bundle,
            checkpoint=args.checkpoint,
            formats=_verify_formats(args.formats),
            full_matrix=not args.quick,
            **parity_options(args),
            record=args.record,
            progress=not args.quiet,
            device=args.device,
            providers=args.providers,
        )
    except BundleError as exc:  # checked, but not recorded (a read-only bundle): show it
        partial = getattr(exc, "report", None)
        if partial is not None:
            print(json.dumps(partial.to_dict(), indent=2) if args.json else partial.table())
        raise
    for reason in report.skipped.values():
        print(f"recsys-export verify: warning: {reason}", file=sys.stderr)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.passed else 1


def _format_metrics(metrics: Mapping[str, Any]) -> str:
    """One line of the main metrics (``inspect``)."""
    parts = []
    for key in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10"):
        if metrics.get(key) is not None:
            parts.append(f"{key} {metrics[key]:.4f}")
    if "train_seconds" in metrics:
        parts.append(f"train {metrics['train_seconds']:.1f}s")
    return "metrics: " + ", ".join(parts) if parts else "metrics: (no test data)"


def cmd_inspect(args: argparse.Namespace) -> int:
    """``recsys-export inspect``: describe a bundle (checksums verified)."""
    from recsys_export.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    man = bundle.manifest
    if args.json:
        print(json.dumps(man.to_dict(), indent=2))
        return 0
    model = man.model
    print(f"bundle {bundle.root}  (format {man.format_version}, created {man.created})")
    print(f"model: {model.kind}  {model.n_users} users x {model.n_items} items")
    hp = model.hyperparameters
    print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    total = sum(f.bytes for f in man.files.values())
    print(f"files ({total / 1e6:.2f} MB, checksums verified):")
    for rel, f in sorted(man.files.items()):
        print(f"  {rel:<32} {f.bytes / 1e6:9.3f} MB  {f.role}")
    print("formats: " + ", ".join(man.formats.names))
    for name, ep in man.entry_points.items():
        ins = ", ".join(f"{i.name}:{i.dtype}{list(i.shape)}" for i in ep.inputs)
        outs = ", ".join(f"{o.name}:{o.dtype}{list(o.shape)}" for o in ep.outputs)
        print(f"  {name}({ins}) -> {outs}")
    metrics = man.training.metrics
    if metrics:
        print("test " + _format_metrics(metrics))
        for name, base in (metrics.get("baselines") or {}).items():
            print(f"  baseline {name}: " + _format_metrics(base).removeprefix("metrics: "))
    if man.parity is not None:
        print("\n".join(man.parity.describe(details=False)))
    else:
        print("parity: not recorded; run 'recsys-export verify'")
    onnx = man.formats.onnx
    for precision, variant in sorted((onnx.variants if onnx is not None else {}).items()):
        print(f"{precision} variant (loaded only when asked for): " + variant.describe())
    return 0


VERIFY = Command(
    name="verify",
    help="check a bundle against the eager model",
    description="Compare eager PyTorch with TorchScript, torch.export and "
    "onnxruntime on every entry point (random batches of 1, 2, 7, 1024; then the "
    "verification plan: the whole user x item matrix while it fits the budget, "
    "else every item for a seeded sample of users covering the edges, random "
    "pairs over the whole matrix, recommend with k in {1, 10, n_items}). Prints a "
    "table and the plan; reads the bundle only (--record writes the report into it). "
    "Exit 0 on pass, 1 on failure.",
    epilog="examples:\n  recsys-export verify artifacts/mf\n"
    "  recsys-export verify artifacts/mf --device cuda --formats onnx,pt2,torch_engine",
    add_options=add_verify_options,
    run=cmd_verify,
)
INSPECT = Command(
    name="inspect",
    help="describe a bundle",
    description="Print a bundle's model, sizes, files, entry points "
    "(inputs/outputs), metrics and parity summary. Verifies checksums.",
    epilog="examples:\n  recsys-export inspect artifacts/mf\n"
    "  recsys-export inspect artifacts/mf --json   # the manifest",
    add_options=add_inspect_options,
    run=cmd_inspect,
)
