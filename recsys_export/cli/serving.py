"""``recommend``, ``score`` and ``bench``: the runtime (onnxruntime, Ray or torch) at work."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recsys_export.cli.terminal import safe_text


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
    k = args.k if args.k is not None else min(10, rec.n_items)
    result = rec.recommend(args.user, k=k, exclude_seen=not args.include_seen)
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
    from recsys_export.ids import MAX_SAFE_INTEGER

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
        if args.providers is not None and args.engine == "torch":
            raise ConfigError(
                "--providers is for the onnxruntime engines (--engine local or ray), not "
                "--engine torch, which runs the bundle's torch program on --device"
            )
        if args.out is None:
            raise ConfigError("--all needs --out FILE (.npy, or .parquet/.csv with --top-k)")
        if args.precision != "fp32" and args.engine != "local":
            raise ConfigError(
                f"--precision {args.precision} runs with the local runtime (--engine local); "
                f"--engine {args.engine} runs the exact model"
            )
        if args.engine == "ray":
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
                device=args.device,
                providers=args.providers,
            )
            print(args.out)
            return 0
        if args.engine == "torch":
            return _score_all_torch(args)
        if args.device not in (None, "cpu"):
            raise ConfigError(
                "--device needs --engine torch or ray (the local runtime runs on CPU)"
            )
        rec = Recommender.load(
            args.bundle,
            intra_op_threads=args.threads,
            providers=args.providers,
            precision=args.precision,
        )
        if args.top_k is not None:
            path = rec.write_topk(
                args.out,
                k=args.top_k,
                exclude_seen=not args.include_seen,
                memory_budget_mb=args.memory_mb,
                progress=not args.quiet,
                overwrite=args.force,
            )
        else:
            if args.out.suffix != ".npy":
                raise ConfigError(
                    f"--all writes a .npy matrix; got {args.out} (use --top-k for tables)"
                )
            path = rec.write_score_matrix(
                args.out,
                memory_budget_mb=args.memory_mb,
                progress=not args.quiet,
                overwrite=args.force,
            )
        print(path)
        return 0
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


def _score_all_torch(args: argparse.Namespace) -> int:
    """``score --all --engine torch``: the bundle's torch program on ``--device``."""
    from recsys_export.errors import ConfigError
    from recsys_export.torch_engine import TorchEngine  # ConfigError without torch

    if args.top_k is None and args.out.suffix != ".npy":
        raise ConfigError(f"--all writes a .npy matrix; got {args.out} (use --top-k for tables)")
    engine = TorchEngine.load(args.bundle, device=args.device or "cpu")
    # --memory-mb sizes CPU blocks; on CUDA the free device memory does
    budget = None if engine.device.type == "cuda" else args.memory_mb
    if args.top_k is not None:
        path = engine.write_topk(
            args.out,
            k=args.top_k,
            exclude_seen=not args.include_seen,
            memory_budget_mb=budget,
            progress=not args.quiet,
            overwrite=args.force,
        )
    else:
        path = engine.write_score_matrix(
            args.out, memory_budget_mb=budget, progress=not args.quiet, overwrite=args.force
        )
    print(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``recsys-export bench``: :func:`recsys_export.bench.run`."""
    from recsys_export.bench import run

    return run(args)
