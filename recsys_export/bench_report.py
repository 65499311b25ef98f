"""The output of ``recsys-export bench``: the JSON schema, the table and the chart.

:mod:`recsys_export.bench` measures and builds the report; this module describes it
(:data:`SCHEMA`), prints it (:func:`format_table`) and draws it (:func:`plot`, with
matplotlib when installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["SCHEMA", "format_table", "plot"]

#: JSON output schema (``--json``); ``ROW`` is the per-row record of ``score_all`` and
#: ``recommend_all``.
SCHEMA: dict[str, Any] = {
    "schema_version": "int, 1",
    "created": "str, UTC ISO time",
    "machine": {
        "nproc": "int",
        "cpu": "str, the CPU's model name (/proc/cpuinfo)",
        "loadavg_start": "[1, 5, 15 min] at start",
        "loadavg_end": "[1, 5, 15 min] at end",
        "python": "str",
        "versions": "{numpy, onnxruntime, torch, onnx}",
    },
    "config": "the command-line options (users, items, factors, hidden, seen, k, repeat, ...)",
    "gpu": "{device, name} of the gpu_* rows, or {skipped: why} (no CUDA device, --skip gpu)",
    "models": {
        "<mf|densenet>": {
            "sizes": "{users, items, factors, hidden (densenet), pairs}",
            "flops_per_pair": "int",
            "export_seconds": "{torch.export, torchscript, pt2, onnx: float}",
            "export_total_seconds": "float",
            "train": "null, or {seconds, rmse, epochs, data} with --train",
            "peak_rss_mib": "float, process ru_maxrss after the model's section",
            "score_all": {"<row>": "ROW"},
            "recommend_all": {"<row>": "ROW"},
            "single_user": {
                "<row>": "{p50_us, p99_us, mean_us, calls, ratio_to_ceiling (p50 / the "
                "ceiling row's p50, MF)} or {skipped}"
            },
            "notes": "[str]",
        }
    },
    "ROW": {
        "users": "int, users covered by one run",
        "runs_s": "[float], seconds of each run",
        "median_s": "float",
        "min_s": "float",
        "max_s": "float",
        "pairs_per_s": "float (median)",
        "ns_per_pair": "float (median)",
        "gflops": "float (median; flops_per_pair * pairs / s)",
        "ratio_to_ceiling": "float, ns_per_pair / ceiling's score_all ns_per_pair (gpu_* "
        "rows: / gpu_ceiling's in the same section)",
        "device": "str, gpu_* rows only: the torch device",
        "skipped": "str, present instead of the numbers when the row was skipped",
    },
}


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table of a report."""
    lines = []
    m = report["machine"]
    lines.append(
        f"{m.get('cpu', 'cpu')}, nproc {m['nproc']}, load average start {m['loadavg_start']}"
        f" end {m['loadavg_end']}"
    )
    gpu = report.get("gpu") or {}
    if "skipped" in gpu:
        lines.append(f"GPU rows skipped: {gpu['skipped']}")
    elif gpu:
        lines.append(f"GPU rows on {gpu['device']} ({gpu['name']})")
    for kind, res in report["models"].items():
        sz = res["sizes"]
        lines.append("")
        lines.append(
            f"== {kind}: {sz['users']} users x {sz['items']} items, {sz['factors']} factors"
            + (f", {sz['hidden']} hidden" if "hidden" in sz else "")
            + f"; export {res['export_total_seconds']:.1f} s "
            + f"({', '.join(f'{k} {v:.2f}' for k, v in res['export_seconds'].items())}); "
            + f"peak RSS {res['peak_rss_mib']:.0f} MiB"
        )
        if res.get("train"):
            t = res["train"]
            lines.append(f"   train: {t['seconds']:.1f} s, {t['epochs']} epochs, RMSE {t['rmse']}")
        head = (
            f"{'section':14s} {'row':19s} {'users':>7s} {'median s':>9s} {'min-max s':>17s}"
            f" {'Mpairs/s':>9s} {'ns/pair':>8s} {'GFLOP/s':>8s} {'x ceil':>7s}"
        )
        lines.append(head)
        lines.append("-" * len(head))
        for section in ("score_all", "recommend_all"):
            for name, row in res[section].items():
                if "skipped" in row:
                    lines.append(f"{section:14s} {name:19s} skipped ({row['skipped']})")
                    continue
                lines.append(
                    f"{section:14s} {name:19s} {row['users']:7d} {row['median_s']:9.3f}"
                    f" {row['min_s']:8.3f}-{row['max_s']:<8.3f} {row['pairs_per_s'] / 1e6:9.1f}"
                    f" {row['ns_per_pair']:8.2f} {row['gflops']:8.1f}"
                    f" {row.get('ratio_to_ceiling', float('nan')):7.2f}"
                )
        for name, row in res["single_user"].items():
            if "skipped" in row:
                lines.append(f"{'single_user':14s} {name:19s} skipped ({row['skipped']})")
                continue
            ratio = f"  x ceil {row['ratio_to_ceiling']:.2f}" if "ratio_to_ceiling" in row else ""
            lines.append(
                f"{'single_user':14s} {name:19s} p50 {row['p50_us']:9.1f} us"
                f"  p99 {row['p99_us']:9.1f} us  ({row['calls']} calls){ratio}"
            )
        for note in res["notes"]:
            lines.append(f"   note: {note}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> str:
    """Bar chart of ns/pair per row (score_all, recommend_all); returns a note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no chart: matplotlib is not installed (pip install matplotlib) for {path}"
    kinds = list(report["models"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        res = report["models"][kind]
        labels, values = [], []
        for section in ("score_all", "recommend_all"):
            for name, row in res[section].items():
                if "ns_per_pair" in row:
                    labels.append(f"{section}\n{name}")
                    values.append(row["ns_per_pair"])
        ax.barh(labels, values)
        ax.set_xscale("log")
        ax.set_xlabel("ns per (user, item) pair (lower is better)")
        ax.set_title(kind)
        ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart written to {path}"
