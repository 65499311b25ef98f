"""``recommend`` and ``score``: the runtime (onnxruntime, Ray or torch) at work."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from recsys_export.cli.options import (
    PROVIDERS_HELP,
    Command,
    add_options,
    add_precision_option,
    add_runtime_options,
    opt,
)
from recsys_export.cli.terminal import safe_text
from recsys_export.core.defaults import (
    DEFAULT_ENGINE,
    DEFAULT_K,
    DEFAULT_MEMORY_MB,
    ENGINES,
    resolve_k,
)

RECOMMEND_OPTIONS = (
    opt("--user", action="append", required=True, help="raw user id (repeatable)"),
    opt(
        "-k",
        "--k",
        type=int,
        help=f"number of items (default {DEFAULT_K}, or every item if the model knows fewer)",
    ),
    opt("--include-seen", action="store_true", help="do not remove already-rated items"),
    opt("--json", action="store_true", help="print JSON"),
)
SCORE_OPTIONS = (
    opt("--user", action="append", help="raw user id (repeatable, with --item)"),
    opt("--item", action="append", help="raw item id (repeatable, pairs with --user)"),
    opt("--all", action="store_true", help="score every user x item"),
    opt("--top-k", type=int, help="with --all: write top-k per user instead of scores"),
    opt("--include-seen", action="store_true", help="with --top-k: keep rated items"),
    opt("--out", type=Path, help="output file (.npy, or .parquet/.csv with --top-k)"),
    opt(
        "--engine",
        choices=ENGINES,
        help=f"with --all (default {DEFAULT_ENGINE}): 'local' is the onnxruntime runtime; "
        "'ray' (with --top-k) scores user blocks on a Ray cluster and writes a directory of "
        "Parquet parts to --out; "
        "'torch' runs the bundle's pt2/TorchScript program on --device (needs torch)",
    ),
    opt(
        "--device",
        default=None,
        help="with --engine torch: cpu or cuda[:N] (default cpu); blocks are sized from "
        "free device memory on CUDA, from --memory-mb on CPU. With --engine ray: the "
        "workers run the torch engine, cuda placing one worker per GPU (default: "
        "onnxruntime workers)",
    ),
    opt("--address", help="Ray cluster address (HEAD:6379); default: a local Ray"),
    opt("--workers", type=int, help="Ray workers (default: one per cluster CPU)"),
    opt(
        "--force",
        action="store_true",
        help="replace an existing --out file (with --engine ray: a previous output dir)",
    ),
    opt("--memory-mb", type=int, help=f"memory budget per chunk (default {DEFAULT_MEMORY_MB})"),
)


def add_recommend_options(p: argparse.ArgumentParser) -> None:
    """The options of ``recommend``."""
    p.add_argument("bundle", type=Path)
    add_options(p, RECOMMEND_OPTIONS)
    add_precision_option(p)
    add_runtime_options(p)


def add_score_options(p: argparse.ArgumentParser) -> None:
    """The options of ``score``."""
    p.add_argument("bundle", type=Path)
    add_options(p, SCORE_OPTIONS)
    add_precision_option(p)
    add_runtime_options(
        p,
        PROVIDERS_HELP + ": the local runtime's sessions, or with --engine ray (and no "
        "--device) every Ray worker's",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def cmd_recommend(args: argparse.Namespace) -> int:
    """``recsys-export recommend``: top-k items per ``--user``."""
    import numpy as np

    from recsys_export.runtime import Recommender

    rec = Recommender.load(
        args.bundle,
        intra_op_threads=args.threads,
        providers=args.providers,
        precision=args.precision,
    )
    result = rec.recommend(
        args.user, k=resolve_k(args.k, rec.n_items), exclude_seen=not args.include_seen
    )
    names = result.names if result.names is not None else np.full(result.items.shape, None)
    # each user as the bundle holds it (an int in an int map), like the items
    users = rec.user_map.to_raw(rec.user_map.to_index(args.user))
    rows = []
    for user, items, scores, titles in zip(users, result.items, result.scores, names):
        # slots no admissible item can fill (the user rated nearly everything) hold
        # item None and score -inf: leave them out rather than print "None -inf"
        filled = [
            (i, s, t) for i, s, t in zip(items, scores, titles) if i is not None and s != -np.inf
        ]
        row = {
            "user": _jsonable(user),
            "items": [_jsonable(i) for i, _, _ in filled],
            "scores": [float(s) for _, s, _ in filled],
        }
        if result.names is not None:
            row["names"] = [t for _, _, t in filled]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"user {safe_text(row['user'])}:")
            # rank. item  title  score, in columns (titles where the bundle has them),
            # control characters escaped (terminal.py)
            ids = [safe_text(i) for i in row["items"]]
            titles = [safe_text(t or "") for t in row.get("names", [])] or [""] * len(ids)
            wid, wt = max(map(len, ids), default=0), max(map(len, titles), default=0)
            for rank, (item, title, score) in enumerate(zip(ids, titles, row["scores"]), 1):
                named = f"{title:<{wt}}  " if wt else ""
                print(f"  {rank:>3}. {item:<{wid}}  {named}{score:.4f}")
    return 0


def _jsonable(value: Any) -> Any:
    """A raw id for ``--json``: as the bundle holds it (int or str); an int beyond 2^53 - 1
    as its decimal string, as in the bundle's ``ids/*.json``, so that JSON readers with
    float64 numbers (JavaScript) read it exactly."""
    from recsys_export.core.ids import MAX_SAFE_INTEGER

    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
        return str(value)
    return value


def cmd_score(args: argparse.Namespace) -> int:
    """``recsys-export score``: pairs, or every user with ``--all``."""
    from recsys_export.errors import ConfigError
    from recsys_export.runtime import Recommender

    if args.all:
        return _score_all(args)
    if not args.user or not args.item or len(args.user) != len(args.item):
        raise ConfigError("give --user and --item the same number of times, or use --all")
    rec = Recommender.load(
        args.bundle,
        intra_op_threads=args.threads,
        providers=args.providers,
        precision=args.precision,
    )
    scores = rec.score(args.user, args.item)
    for user, item, score in zip(args.user, args.item, scores):
        print(f"{safe_text(user)}\t{safe_text(item)}\t{float(score):.6f}")
    return 0


def _score_all(args: argparse.Namespace) -> int:
    """``score --all``: the engine :func:`~recsys_export.engines.open_engine` picks (or the
    Ray job) writes the matrix or the top-k table of every user."""
    from recsys_export.engines import EngineOptions, open_engine
    from recsys_export.errors import ConfigError
    from recsys_export.runtime import writers

    options = EngineOptions(
        args.engine, args.device, args.providers, args.threads, args.precision
    ).checked()
    if args.out is None:
        raise ConfigError("--all needs --out FILE (.npy, or .parquet/.csv with --top-k)")
    if options.engine == "ray":
        if args.top_k is None:
            raise ConfigError("--engine ray needs --top-k K (it writes top-k Parquet parts)")
        from recsys_export.scale import score_topk_ray

        score_topk_ray(
            args.bundle,
            args.out,
            k=args.top_k,
            exclude_seen=not args.include_seen,
            address=args.address,
            workers=args.workers,
            progress=not args.quiet,
            overwrite=args.force,
            device=options.device,
            providers=options.providers,
        )
        print(args.out)
        return 0
    if args.top_k is None and args.out.suffix != ".npy":
        raise ConfigError(f"--all writes a .npy matrix; got {args.out} (use --top-k for tables)")
    engine = open_engine(
        args.bundle,
        engine=options.engine,
        device=options.device,
        providers=options.providers,
        threads=options.threads,
        precision=options.precision,
    )
    # --memory-mb sizes CPU blocks; on CUDA the free device memory does
    budget = None if options.device not in (None, "cpu") else args.memory_mb
    common = {"memory_budget_mb": budget, "progress": not args.quiet, "overwrite": args.force}
    if args.top_k is not None:
        path = writers.write_topk(
            engine, args.out, args.top_k, exclude_seen=not args.include_seen, **common
        )
    else:
        path = writers.write_score_matrix(engine, args.out, **common)
    print(path)
    return 0


RECOMMEND = Command(
    name="recommend",
    help="top-k items for users (onnxruntime)",
    description="Recommend with the bundle's ONNX graphs; items the user "
    "already rated are left out unless --include-seen.",
    epilog="example:\n  recsys-export recommend artifacts/mf --user 42 --user 7 -k 5 --json",
    add_options=add_recommend_options,
    run=cmd_recommend,
)
SCORE = Command(
    name="score",
    help="score pairs or the full matrix (onnxruntime)",
    description="Score (user, item) pairs, or every user x item with --all: "
    "the full matrix to a .npy file, or top-k per user to .parquet/.csv with "
    "--top-k. Works in bounded memory (users in chunks).",
    epilog="examples:\n  recsys-export score artifacts/mf --user 42 --item 318\n"
    "  recsys-export score artifacts/mf --all --out scores.npy\n"
    "  recsys-export score artifacts/mf --all --top-k 10 --out top10.parquet\n"
    "  recsys-export score artifacts/mf --all --top-k 10 --engine ray --out top10/\n"
    "  recsys-export score artifacts/mf --all --top-k 10 --engine torch --device cuda "
    "--out top10.parquet",
    add_options=add_score_options,
    run=cmd_score,
)
