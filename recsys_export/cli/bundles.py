"""``export``, ``verify`` and ``inspect``: bundles written, checked and described."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_export(args: argparse.Namespace) -> int:
    """``recsys-export export``: a checkpoint (or a state dict) to a verified bundle."""
    import time

    from recsys_export.checkpoint import load_checkpoint
    from recsys_export.export import export_bundle

    t0 = time.perf_counter()
    own = [
        flag
        for flag, given in (
            ("--ids-from", getattr(args, "ids_from", None) is not None),
            ("--model-args", getattr(args, "model_args", "{}") != "{}"),
            ("--keep-partial", getattr(args, "keep_partial", False)),
        )
        if given
    ]
    if getattr(args, "model", None) or own:
        if not _ours_as_checkpoint(args, own):
            return _export_own_model(args, t0)
    ckpt = load_checkpoint(args.checkpoint)
    if args.items is not None:
        from recsys_export.items import read_item_names

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
        atol=args.atol,
        rtol=args.rtol,
        budget=args.budget,
        full=args.full,
        progress=not args.quiet,
        precision=args.precision,
    )
    if args.quiet:
        print(args.out)
        return 0
    m = manifest["model"]
    print(f"bundle: {args.out} ({ckpt.kind}, {m['n_users']} users x {m['n_items']} items)")
    _print_export_summary(args, manifest, t0)
    return 0


def _ours_as_checkpoint(args: argparse.Namespace, own: list[str]) -> bool:
    """Whether ``export CKPT --model ...`` names a checkpoint of ours, to export as one.

    A recsys-export checkpoint keeps its own ids, item names and seen items: options
    for a state dict trained elsewhere are refused with it, as is a ``--model`` of
    another kind; ``--model`` of its own kind is a note.
    """
    from recsys_export.checkpoint import checkpoint_kind
    from recsys_export.errors import ConfigError

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


def _print_export_summary(args: argparse.Namespace, manifest: dict[str, Any], t0: float) -> None:
    import time

    from recsys_export.plan import describe_parity
    from recsys_export.runtime.variant import describe_variant

    times = manifest["timings"]["export_seconds"]
    print("export seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    parity = manifest.get("parity")
    if parity:
        lines = describe_parity(parity)
        print("\n".join(lines[1:] + [f"{lines[0]} (details: {args.out}/parity.json)"]))
    else:
        print("parity: not verified (--no-verify); run 'recsys-export verify' before serving")
    for precision, variant in manifest["formats"].get("onnx", {}).get("variants", {}).items():
        print(f"{precision} variant: " + describe_variant(variant))
    print(f"total {time.perf_counter() - t0:.1f}s")


def _export_own_model(args: argparse.Namespace, t0: float) -> int:
    """``export STATE_DICT --model ...``: a model trained elsewhere (:mod:`recsys_export.byom`)."""
    from recsys_export.byom import export_model, ids_from_file, module_from_files
    from recsys_export.errors import ConfigError

    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-args is not JSON: {exc}") from None
    if not isinstance(model_args, dict):
        raise ConfigError("--model-args must be a JSON object of constructor keywords")
    module = module_from_files(args.checkpoint, args.model, model_args)
    ratings = ids_from_file(args.ids_from) if args.ids_from else None
    item_names = None
    if args.items is not None:  # {raw id: name}, aligned with the model's ids by export_model
        from recsys_export.items import read_item_table

        ids, names = read_item_table(
            args.items, id_col=args.item_id_col, name_col=args.item_name_col
        )
        item_names = dict(zip(ids.tolist(), names))
        _note_items(args, f"{len(item_names):,} item names read from {args.items}")
    result = export_model(
        module,
        args.out,
        kind=args.model if args.model in ("mf", "densenet") else None,
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
    m = result.manifest["model"]
    how = f"{result.kind} via the {result.path} path" if result.kind != result.path else "generic"
    print(
        f"bundle: {args.out} ({how}: {result.reason}; {m['n_users']} users x {m['n_items']} items)"
    )
    _print_export_summary(args, result.manifest, t0)
    return 0


def _note_items(args: argparse.Namespace, summary: str) -> None:
    if not args.quiet:
        print(f"items: {summary}", file=sys.stderr)


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
            atol=args.atol,
            rtol=args.rtol,
            full_matrix=not args.quick,
            budget=args.budget,
            full=args.full,
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


def _format_metrics(metrics: dict[str, Any]) -> str:
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
    from recsys_export.plan import describe_parity
    from recsys_export.runtime.variant import describe_variant

    bundle = Bundle.load(args.bundle)
    man = bundle.manifest
    if args.json:
        print(json.dumps(man, indent=2))
        return 0
    model = bundle.spec.model
    print(f"bundle {bundle.root}  (format {man['format_version']}, created {man.get('created')})")
    print(f"model: {model.kind}  {model.n_users} users x {model.n_items} items")
    hp = model.hyperparameters
    print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    total = sum(f["bytes"] for f in man["files"].values())
    print(f"files ({total / 1e6:.2f} MB, checksums verified):")
    for rel, f in sorted(man["files"].items()):
        print(f"  {rel:<32} {f['bytes'] / 1e6:9.3f} MB  {f['role']}")
    print("formats: " + ", ".join(bundle.spec.formats))
    for name, ep in man.get("entry_points", {}).items():
        ins = ", ".join(f"{i['name']}:{i['dtype']}{i['shape']}" for i in ep["inputs"])
        outs = ", ".join(f"{o['name']}:{o['dtype']}{o['shape']}" for o in ep["outputs"])
        print(f"  {name}({ins}) -> {outs}")
    metrics = man.get("training", {}).get("metrics", {})
    if metrics:
        print("test " + _format_metrics(metrics))
        for name, base in (metrics.get("baselines") or {}).items():
            print(f"  baseline {name}: " + _format_metrics(base).removeprefix("metrics: "))
    parity = man.get("parity")
    if parity:
        print("\n".join(describe_parity(parity, details=False)))
    else:
        print("parity: not recorded; run 'recsys-export verify'")
    for precision, variant in sorted(bundle.spec.variants.items()):
        print(
            f"{precision} variant (loaded only when asked for): " + describe_variant(variant.entry)
        )
    return 0
