"""``export``: a checkpoint (or a state dict trained elsewhere) to a verified bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recsys_export.cli.options import (
    Command,
    add_group,
    add_items_options,
    add_options,
    add_plan_options,
    add_precision_option,
    add_tolerance_options,
    opt,
    parity_options,
)
from recsys_export.core.defaults import MODEL_KINDS

OWN_MODEL_OPTIONS = (
    opt(
        "--model",
        metavar="mf|densenet|MODULE:CLASS",
        help="CHECKPOINT is a torch.save'd state dict (loaded with weights_only=True): of "
        "the post's MatrixFactorization (mf) or DenseNet (densenet), sizes read from the "
        "tensors; or of the nn.Module class MODULE:CLASS (package.module:Class or "
        "file.py:Class, built with --model-args) whose forward(users, items) scores pairs",
    ),
    opt("--model-args", metavar="JSON", help="constructor keywords for MODULE:CLASS"),
    opt(
        "--ids-from",
        type=Path,
        metavar="RATINGS",
        help="ratings file giving raw ids (sorted unique values = the model's indices) and "
        "the seen items recommend removes",
    ),
    opt(
        "--keep-partial",
        action="store_true",
        help="when a format cannot be exported, write the others",
    ),
)
OUTPUT_OPTIONS = (
    opt(
        "--formats",
        default=None,
        help="comma-separated subset of onnx,torchscript,pt2, or all (default: "
        "onnx,torchscript). pt2 (torch.export) is opt-in, as it adds several seconds per "
        "export: add it with --formats all or --formats onnx,torchscript,pt2",
    ),
    opt("--force", action="store_true", help="replace an existing bundle"),
    opt(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the parity check (not recommended)",
    ),
    opt(
        "--external-data",
        action="store_true",
        help="keep ONNX weights in a side file (automatic above 2 GB)",
    ),
)


def add_export_options(p: argparse.ArgumentParser) -> None:
    """The options of ``export``."""
    p.add_argument(
        "checkpoint", type=Path, help="checkpoint written by 'train' (or a state dict: --model)"
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    add_group(
        p,
        "your own model (docs/own-model.md)",
        OWN_MODEL_OPTIONS,
        "export a state dict trained elsewhere, e.g.\n  recsys-export export mf_state.pt "
        "--model mf --ids-from ratings.csv --out artifacts/mine",
    )
    add_items_options(
        p,
        "stored in the bundle, replacing the names a checkpoint holds (ids the model "
        "lacks are ignored)",
    )
    add_options(p, OUTPUT_OPTIONS)
    add_precision_option(p, export=True)
    add_tolerance_options(p, "parity ")
    add_plan_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the bundle path")


def cmd_export(args: argparse.Namespace) -> int:
    """``recsys-export export``: a checkpoint (or a state dict) to a verified bundle."""
    import time

    from recsys_export.export import export_bundle
    from recsys_export.models.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    own = [
        flag
        for flag, given in (
            ("--ids-from", getattr(args, "ids_from", None) is not None),
            ("--model-args", getattr(args, "model_args", None) is not None),
            ("--keep-partial", getattr(args, "keep_partial", False)),
        )
        if given
    ]
    if getattr(args, "model", None) or own:
        if not _ours_as_checkpoint(args, own):
            return _export_own_model(args, t0)
    ckpt = load_checkpoint(args.checkpoint)
    if args.items is not None:
        from recsys_export.data.items import read_item_names

        names = read_item_names(
            args.items, item_map=ckpt.item_map, id_col=args.item_id_col, name_col=args.item_name_col
        )
        _note_items(args, names.summary())
        ckpt.item_names = names.names
    manifest = export_bundle(
        ckpt,
        args.out,
        formats=args.formats,
        overwrite=args.force,
        external_data=True if args.external_data else None,
        verify=args.verify,
        **parity_options(args),
        progress=not args.quiet,
        precision=args.precision,
    )
    if args.quiet:
        print(args.out)
        return 0
    m = manifest.model
    print(f"bundle: {args.out} ({ckpt.kind}, {m.n_users} users x {m.n_items} items)")
    _print_export_summary(args, manifest, t0)
    return 0


def _ours_as_checkpoint(args: argparse.Namespace, own: list[str]) -> bool:
    """Whether ``export CKPT --model ...`` names a checkpoint of ours, to export as one.

    A recsys-export checkpoint keeps its own ids, item names and seen items: options
    for a state dict trained elsewhere are refused with it, as is a ``--model`` of
    another kind; ``--model`` of its own kind is a note.
    """
    from recsys_export.errors import ConfigError
    from recsys_export.models.checkpoint import checkpoint_kind

    kind = checkpoint_kind(args.checkpoint)
    flags = f"{', '.join(own)} {'is' if len(own) == 1 else 'are'} for state dicts trained elsewhere"
    if kind is None:
        if not args.model:
            raise ConfigError(
                f"{flags}: give --model mf|densenet|MODULE:CLASS too (docs/own-model.md)"
            )
        return False
    ours = (
        f"{args.checkpoint} is a recsys-export checkpoint ({kind}): it carries its own "
        "ids, item names and seen items"
    )
    if own:
        raise ConfigError(f"{ours}; {flags}: leave {'it' if len(own) == 1 else 'them'} out")
    if args.model != kind:
        raise ConfigError(
            f"{ours}, and --model {args.model} does not match it; export it without --model"
        )
    print(f"note: {ours}; exported as such (--model {kind} is not needed)", file=sys.stderr)
    return True


def _print_export_summary(args: argparse.Namespace, manifest: Any, t0: float) -> None:
    import time

    times = manifest.timings.export_seconds
    print("export seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    if manifest.parity is not None:
        lines = manifest.parity.describe()
        print("\n".join(lines[1:] + [f"{lines[0]} (details: {args.out}/parity.json)"]))
    else:
        print("parity: not verified (--no-verify); run 'recsys-export verify' before serving")
    onnx = manifest.formats.onnx
    for precision, variant in (onnx.variants if onnx is not None else {}).items():
        print(f"{precision} variant: " + variant.describe())
    print(f"total {time.perf_counter() - t0:.1f}s")


def _export_own_model(args: argparse.Namespace, t0: float) -> int:
    """``export STATE_DICT --model ...``: a model trained elsewhere (:mod:`recsys_export.byom`)."""
    from recsys_export.byom import export_model, ids_from_file, module_from_files
    from recsys_export.errors import ConfigError

    for flag, given in (("--budget", args.budget is not None), ("--full", bool(args.full))):
        if given:  # export_model verifies on its own module's plan
            raise ConfigError(
                f"{flag} would be ignored: it sizes the parity plan of a recsys-export "
                "checkpoint; a model exported with --model is verified on its own plan "
                "(check it at any size with recsys_export.byom.verify_module)"
            )
    try:
        model_args = json.loads("{}" if args.model_args is None else args.model_args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-args is not JSON: {exc}") from None
    if not isinstance(model_args, dict):
        raise ConfigError("--model-args must be a JSON object of constructor keywords")
    module = module_from_files(args.checkpoint, args.model, model_args)
    ratings = ids_from_file(args.ids_from) if args.ids_from else None
    item_names = None
    if args.items is not None:  # {raw id: name}, aligned with the model's ids by export_model
        from recsys_export.data.items import read_item_table

        ids, names = read_item_table(
            args.items, id_col=args.item_id_col, name_col=args.item_name_col
        )
        item_names = dict(zip(ids.tolist(), names))
        _note_items(args, f"{len(item_names):,} item names read from {args.items}")
    result = export_model(
        module,
        args.out,
        kind=args.model if args.model in MODEL_KINDS else None,
        ratings=ratings,
        item_names=item_names,
        formats=args.formats,
        verify=args.verify,
        keep_partial=args.keep_partial,
        overwrite=args.force,
        external_data=True if args.external_data else None,
        atol=args.atol,
        rtol=args.rtol,
        progress=not args.quiet,
        precision=args.precision,
    )
    for fmt, why in result.failed.items():
        print(f"recsys-export export: warning: {fmt} not exported: {why}", file=sys.stderr)
    if args.quiet:
        print(args.out)
        return 0
    m = result.manifest.model
    how = f"{result.kind} via the {result.path} path" if result.kind != result.path else "generic"
    print(f"bundle: {args.out} ({how}: {result.reason}; {m.n_users} users x {m.n_items} items)")
    _print_export_summary(args, result.manifest, t0)
    return 0


def _note_items(args: argparse.Namespace, summary: str) -> None:
    if not args.quiet:
        print(f"items: {summary}", file=sys.stderr)


EXPORT = Command(
    name="export",
    help="export a checkpoint to a verified bundle",
    description="Write ONNX and TorchScript files (and, with --formats all, "
    "torch.export .pt2 programs) for score, score_all and recommend into a bundle "
    "directory (atomically), then verify parity with the eager model (on by default).",
    epilog="examples:\n  recsys-export export runs/mf.pt --out artifacts/mf\n"
    "  recsys-export export runs/mf.pt --out artifacts/mf --formats all",
    add_options=add_export_options,
    run=cmd_export,
)
