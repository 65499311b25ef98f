"""The argument parser of ``recsys-export``: every sub-command and its options (the
option groups several commands share are in :mod:`recsys_export.cli.options`).

Only argparse and the standard library are imported here (torch never is), so that the
runtime-only install can parse every command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys_export import __version__
from recsys_export.cli.options import (
    ArgumentParser,
    add_data_args,
    add_items_args,
    add_plan_args,
    comma_list,
)
from recsys_export.recipes import describe_recipes

EPILOG_TRAIN = """\
examples:
  recsys-export train                                  # MF ranking recipe on the bundled MovieLens
  recsys-export train ratings.csv --model densenet --out runs/dense.pt
  recsys-export train ratings.csv --objective rating   # regression on the ratings (RMSE)
  recsys-export train clicks.csv                       # no rating column: implicit feedback
  recsys-export train ratings.csv --implicit --min-rating 4   # ratings >= 4 as interactions
  recsys-export train u1.base --test u1.test           # a canonical train/test pair
  recsys-export train toy --preset post --model mf     # the post's exact recipe on its 5x4 matrix

How rows are used: test rows (--split, or --test FILE) are held out for the reported
metrics only; a validation slice (--valid-fraction of the remaining rows) drives early
stopping; the model trains on the rest. The model is printed beside a popularity
baseline and a damped user+item bias baseline on the same test rows.

Recipes (--objective; override any flag; batch_size=auto: sized from the number of users,
see docs/training.md):
{recipes}
Presets: 'post' = the post's loop (per-rating SGD, lr 1e-3, 500 epochs, 3 factors,
no biases); 'tiny' = full-batch Adam for tiny data such as the toy matrix.
Duplicate (user, item) rows keep the last occurrence (--duplicates to change).
"""


def _add_precision(p: argparse.ArgumentParser, export: bool = False) -> None:
    """--precision of export (write variants) and recommend/score (use one)."""
    if export:
        p.add_argument(
            "--precision",
            default="fp32",
            metavar="fp16,int8",
            help="also write approximate variants beside the exact graphs: fp16 weights, "
            "int8 per-row factors (MF), or both; each is judged on recall of the exact top-k "
            "lists (default fp32: none)",
        )
        return
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="run the bundle's approximate variant (export --precision; default fp32: the "
        "exact graphs)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = ArgumentParser(
        prog="recsys-export",
        formatter_class=fmt,
        description=(
            "Train PyTorch recommenders (matrix factorization, DenseNet), export them to "
            "TorchScript / ONNX / torch.export bundles proven to match the eager model, and "
            "serve them with onnxruntime."
        ),
        epilog=(
            "typical flow:\n"
            "  recsys-export train ratings.csv --out runs/mf.pt\n"
            "  recsys-export export runs/mf.pt --out artifacts/mf\n"
            "  recsys-export verify artifacts/mf\n"
            "  recsys-export recommend artifacts/mf --user 42 -k 10\n"
            "  recsys-export score artifacts/mf --all --top-k 10 --out top10.parquet\n\n"
            "Run 'recsys-export COMMAND --help' for the options of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"recsys-export {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model and write a checkpoint",
        formatter_class=fmt,
        description="Train MF or DenseNet on a ratings file (ranking objective by default); "
        "write a checkpoint with weights, id maps, seen items, the train/validation/test part "
        "of every row, and test metrics beside a popularity and a bias baseline.",
        epilog=EPILOG_TRAIN.replace("{recipes}", describe_recipes()),
    )
    add_data_args(p)
    p.add_argument(
        "--model", choices=["mf", "densenet"], default="mf", help="model kind (default mf)"
    )
    p.add_argument("--out", type=Path, help="checkpoint path (default runs/MODEL.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    p.add_argument(
        "--preset",
        choices=["default", "post", "tiny"],
        default="default",
        help="hyperparameter preset (see below)",
    )
    o = p.add_argument_group("objective")
    o.add_argument(
        "--objective",
        choices=["ranking", "rating"],
        help="'ranking' (default): learn top-k lists; 'rating': regression on the ratings",
    )
    o.add_argument("--loss", choices=["softmax", "bpr"], help="ranking loss (default softmax)")
    o.add_argument(
        "--implicit",
        action="store_true",
        help="treat the rows as interactions: ratings >= --min-rating become positives of "
        "weight 1, the rest are dropped (a file without rating column is implicit anyway)",
    )
    o.add_argument(
        "--min-rating",
        type=float,
        help="ranking: rows rated below this are not positives (default: MF learns from "
        "the relevant rows, rating >= --threshold; DenseNet from every row)",
    )
    h = p.add_argument_group("hyperparameters (defaults depend on --model and --objective)")
    h.add_argument("--factors", type=int, help="embedding size")
    h.add_argument("--hidden", type=int, help="DenseNet hidden width")
    h.add_argument(
        "--biased",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="global mean (+ user/item biases for MF)",
    )
    h.add_argument("--dropout", type=float, help="DenseNet hidden-layer dropout")
    h.add_argument("--epochs", type=int, help="maximum epochs")
    h.add_argument(
        "--batch-size",
        type=int,
        help="ratings per step (users per step for --loss softmax; 0 = full batch)",
    )
    h.add_argument("--lr", type=float, help="learning rate")
    h.add_argument("--optimizer", choices=["adam", "sparse_adam", "sgd"], help="optimizer")
    h.add_argument(
        "--l2",
        type=float,
        help="L2 on embeddings (rating: on each batch's rows; ranking: weight decay)",
    )
    h.add_argument("--weight-decay", type=float, help="weight decay of dense layers")
    h.add_argument("--init-std", type=float, help="embedding init std")
    h.add_argument("--threads", type=int, help="torch CPU threads while training (default 1)")
    h.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    h.add_argument(
        "--select-tolerance",
        type=float,
        help="ranking: of the epochs within this fraction of the best validation NDCG, "
        "keep the one whose validation top-k lists cover the most items (0 = the best)",
    )
    h.add_argument(
        "--min-gain",
        type=float,
        help="ranking: a new best validation NDCG resets --patience only when it beats the "
        "last reset by more than this fraction (0 = any new best)",
    )
    h.add_argument(
        "--validate-every",
        type=int,
        help="ranking: validate every N epochs and after the last (patience still counts epochs)",
    )
    add_items_args(
        p,
        "stored in the checkpoint and the bundle; the bundled MovieLens sample gets its "
        "titles without it",
    )
    m = p.add_argument_group("metrics")
    m.add_argument("-k", "--k", type=int, help="cut-off of ranking metrics (default 10)")
    m.add_argument(
        "--threshold",
        type=float,
        help="held-out ratings >= this are relevant (default: 80%% of the highest rating, "
        "e.g. 4 on a 1-5 scale; every row for implicit data)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "evaluate",
        help="metrics of a checkpoint beside the baselines",
        formatter_class=fmt,
        description="Report RMSE, MAE, precision@k, recall@k, NDCG@k, MAP@k, coverage and "
        "the median training count of recommended items for the model, a popularity "
        "baseline and a damped bias baseline, on the test rows recorded in the checkpoint "
        "or on a separate --test file.",
        epilog="examples:\n  recsys-export evaluate runs/mf.pt\n"
        "  recsys-export evaluate runs/mf.pt --test u1.test --json",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by 'train'")
    p.add_argument(
        "--test",
        type=Path,
        help="test file in raw ids (mapped onto the checkpoint's ids; unknown ones dropped)",
    )
    g = p.add_argument_group("reading the --test file")
    for flag, what in (("user", "user id"), ("item", "item id"), ("rating", "rating")):
        g.add_argument(f"--{flag}-col", help=f"{what} column (name or 0-based position)")
    g.add_argument("--timestamp-col", help="timestamp column (name or position)")
    g.add_argument("--sep", help="field separator (default: detected)")
    g.add_argument(
        "--duplicates",
        choices=["last", "first", "mean", "error"],
        help="policy for duplicate (user, item) rows (default: last, keep the last)",
    )
    p.add_argument("-k", "--k", type=int, default=10, help="cut-off (default 10)")
    p.add_argument(
        "--threshold", type=float, help="relevance threshold (default: the one of training)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "export",
        help="export a checkpoint to a verified bundle",
        formatter_class=fmt,
        description="Write ONNX and TorchScript files (and, with --formats all, "
        "torch.export .pt2 programs) for score, score_all and recommend into a bundle "
        "directory (atomically), then verify parity with the eager model (on by default).",
        epilog="examples:\n  recsys-export export runs/mf.pt --out artifacts/mf\n"
        "  recsys-export export runs/mf.pt --out artifacts/mf --formats all",
    )
    p.add_argument(
        "checkpoint", type=Path, help="checkpoint written by 'train' (or a state dict: --model)"
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    own = p.add_argument_group(
        "your own model (docs/own-model.md)",
        "export a state dict trained elsewhere, e.g.\n  recsys-export export mf_state.pt "
        "--model mf --ids-from ratings.csv --out artifacts/mine",
    )
    own.add_argument(
        "--model",
        metavar="mf|densenet|MODULE:CLASS",
        help="CHECKPOINT is a torch.save'd state dict (loaded with weights_only=True): of "
        "the post's MatrixFactorization (mf) or DenseNet (densenet), sizes read from the "
        "tensors; or of the nn.Module class MODULE:CLASS (package.module:Class or "
        "file.py:Class, built with --model-args) whose forward(users, items) scores pairs",
    )
    own.add_argument(
        "--model-args", default="{}", metavar="JSON", help="constructor keywords for MODULE:CLASS"
    )
    own.add_argument(
        "--ids-from",
        type=Path,
        metavar="RATINGS",
        help="ratings file giving raw ids (sorted unique values = the model's indices) and "
        "the seen items recommend removes",
    )
    own.add_argument(
        "--keep-partial",
        action="store_true",
        help="when a format cannot be exported, write the others",
    )
    add_items_args(
        p,
        "stored in the bundle, replacing the names a checkpoint holds (ids the model "
        "lacks are ignored)",
    )
    p.add_argument(
        "--formats",
        default=None,
        help="comma-separated subset of onnx,torchscript,pt2, or all (default: "
        "onnx,torchscript). pt2 (torch.export) is opt-in, as it adds several seconds per "
        "export: add it with --formats all or --formats onnx,torchscript,pt2",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the parity check (not recommended)",
    )
    p.add_argument(
        "--external-data",
        action="store_true",
        help="keep ONNX weights in a side file (automatic above 2 GB)",
    )
    _add_precision(p, export=True)
    p.add_argument(
        "--atol", type=float, default=None, help="parity abs tolerance (default: float32 bound)"
    )
    p.add_argument(
        "--rtol", type=float, default=None, help="parity rel tolerance (default: float32 bound)"
    )
    add_plan_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the bundle path")

    p = sub.add_parser(
        "verify",
        help="check a bundle against the eager model",
        formatter_class=fmt,
        description="Compare eager PyTorch with TorchScript, torch.export and "
        "onnxruntime on every entry point (random batches of 1, 2, 7, 1024; then the "
        "verification plan: the whole user x item matrix while it fits the budget, "
        "else every item for a seeded sample of users covering the edges, random "
        "pairs over the whole matrix, recommend with k in {1, 10, n_items}). Prints a "
        "table and the plan; reads the bundle only (--record writes the report into it). "
        "Exit 0 on pass, 1 on failure.",
        epilog="examples:\n  recsys-export verify artifacts/mf\n"
        "  recsys-export verify artifacts/mf --device cuda --formats onnx,pt2,torch_engine",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="compare with this checkpoint instead of the bundle's reference weights",
    )
    p.add_argument(
        "--formats",
        help="subset of onnx,torchscript,pt2,runtime,torch_engine to check (default: "
        "every format the bundle holds, and runtime; not torch_engine; 'all' is "
        "onnx,torchscript,pt2; 'runtime' is the Python onnxruntime runtime with its "
        "fast-path graphs, 'torch_engine' the torch batch engine of score --engine torch, "
        "on --device)",
    )
    p.add_argument(
        "--atol", type=float, default=None, help="abs tolerance (default: float32 bound)"
    )
    p.add_argument(
        "--rtol", type=float, default=None, help="rel tolerance (default: float32 bound)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu or cuda[:N]: where the torch side runs (the eager reference, TorchScript, "
        "pt2, torch_engine; default cpu); the onnx/runtime checks use --providers. In "
        "parity.json and the table",
    )
    p.add_argument(
        "--providers",
        type=comma_list,
        help="comma list of onnxruntime execution providers of the onnx and runtime "
        "checks, in priority order (default CPUExecutionProvider; e.g. "
        "CUDAExecutionProvider,CPUExecutionProvider with onnxruntime-gpu)",
    )
    add_plan_args(p, quick=True)
    p.add_argument(
        "--record",
        action="store_true",
        help="write parity.json into the bundle and the summary into its manifest (the "
        "bundle is rewritten atomically; refused if it is read-only). Without it the "
        "bundle is only read: --json > FILE keeps the report beside it",
    )
    p.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="read the bundle only (the default; the opposite of --record)",
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "inspect",
        help="describe a bundle",
        formatter_class=fmt,
        description="Print a bundle's model, sizes, files, entry points "
        "(inputs/outputs), metrics and parity summary. Verifies checksums.",
        epilog="examples:\n  recsys-export inspect artifacts/mf\n"
        "  recsys-export inspect artifacts/mf --json   # the manifest",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    p = sub.add_parser(
        "recommend",
        help="top-k items for users (onnxruntime)",
        formatter_class=fmt,
        description="Recommend with the bundle's ONNX graphs; items the user "
        "already rated are left out unless --include-seen.",
        epilog="example:\n  recsys-export recommend artifacts/mf --user 42 --user 7 -k 5 --json",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--user", action="append", required=True, help="raw user id (repeatable)")
    p.add_argument(
        "-k",
        "--k",
        type=int,
        default=None,
        help="number of items (default 10, or every item if the model knows fewer)",
    )
    p.add_argument("--include-seen", action="store_true", help="do not remove already-rated items")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_precision(p)
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: cores)")
    p.add_argument(
        "--providers",
        type=comma_list,
        help="comma list of onnxruntime execution providers in priority order (default "
        "CPUExecutionProvider; e.g. CUDAExecutionProvider,CPUExecutionProvider with "
        "onnxruntime-gpu)",
    )

    p = sub.add_parser(
        "score",
        help="score pairs or the full matrix (onnxruntime)",
        formatter_class=fmt,
        description="Score (user, item) pairs, or every user x item with --all: "
        "the full matrix to a .npy file, or top-k per user to .parquet/.csv with "
        "--top-k. Works in bounded memory (users in chunks).",
        epilog="examples:\n  recsys-export score artifacts/mf --user 42 --item 318\n"
        "  recsys-export score artifacts/mf --all --out scores.npy\n"
        "  recsys-export score artifacts/mf --all --top-k 10 --out top10.parquet\n"
        "  recsys-export score artifacts/mf --all --top-k 10 --engine ray --out top10/\n"
        "  recsys-export score artifacts/mf --all --top-k 10 --engine torch --device cuda "
        "--out top10.parquet",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--user", action="append", help="raw user id (repeatable, with --item)")
    p.add_argument("--item", action="append", help="raw item id (repeatable, pairs with --user)")
    p.add_argument("--all", action="store_true", help="score every user x item")
    p.add_argument("--top-k", type=int, help="with --all: write top-k per user instead of scores")
    p.add_argument("--include-seen", action="store_true", help="with --top-k: keep rated items")
    p.add_argument("--out", type=Path, help="output file (.npy, or .parquet/.csv with --top-k)")
    p.add_argument(
        "--engine",
        choices=("local", "ray", "torch"),
        default="local",
        help="with --all: 'local' is the onnxruntime runtime; 'ray' (with --top-k) scores "
        "user blocks on a Ray cluster and writes a directory of Parquet parts to --out; "
        "'torch' runs the bundle's pt2/TorchScript program on --device (needs torch)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="with --engine torch: cpu or cuda[:N] (default cpu); blocks are sized from "
        "free device memory on CUDA, from --memory-mb on CPU. With --engine ray: the "
        "workers run the torch engine, cuda placing one worker per GPU (default: "
        "onnxruntime workers)",
    )
    p.add_argument("--address", help="Ray cluster address (HEAD:6379); default: a local Ray")
    p.add_argument("--workers", type=int, help="Ray workers (default: one per cluster CPU)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out file (with --engine ray: a previous output dir)",
    )
    p.add_argument(
        "--memory-mb", type=int, default=256, help="memory budget per chunk (default 256)"
    )
    _add_precision(p)
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: cores)")
    p.add_argument(
        "--providers",
        type=comma_list,
        help="comma list of onnxruntime execution providers in priority order (default "
        "CPUExecutionProvider; e.g. CUDAExecutionProvider,CPUExecutionProvider with "
        "onnxruntime-gpu): the local runtime's sessions, or with --engine ray (and no "
        "--device) every Ray worker's",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from recsys_export.cli.serve import DESCRIPTION as SERVE_DESCRIPTION
    from recsys_export.cli.serve import EPILOG as SERVE_EPILOG
    from recsys_export.cli.serve import add_arguments as add_serve_arguments

    p = sub.add_parser(
        "serve",
        help="serve a bundle over HTTP (JSON API, Open Inference Protocol, metrics)",
        formatter_class=fmt,
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
    )
    add_serve_arguments(p)
    p = sub.add_parser(
        "bench",
        help="benchmark every format and the runtime side by side",
        formatter_class=fmt,
        description="Score-all, recommend-all and single-user latency for MF and DenseNet: a "
        "bare onnxruntime graph of the same math (the ceiling), numpy, eager torch, "
        "TorchScript, torch.export and our runtime, in one process. Prints a table, writes "
        "JSON (schema in docs/performance.md) and, with matplotlib installed, a PNG chart.",
        epilog="examples:\n  recsys-export bench                 # tiny size, seconds\n"
        "  recsys-export bench --preset full   # 100k users x 20k items x 64 factors, 128 hidden",
    )
    from recsys_export.bench import add_arguments as add_bench_arguments

    add_bench_arguments(p)
    return parser
