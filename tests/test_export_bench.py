"""Smoke test of benchmarks/export_bench.py at a tiny size (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # exports in subprocesses (about 80 s on 2 busy cores)

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "export_bench", ROOT / "benchmarks" / "export_bench.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_export_bench_tiny(tmp_path, capsys):
    bench = _module()
    out = tmp_path / "bench.json"
    rc = bench.main(
        ["--preset", "tiny", "--rows", "tiny-mf", "--work", str(tmp_path), "--json", str(out)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "export s" in text and "parity s" in text and "peak RSS" in text and "tiny-mf" in text
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["name"] == "tiny-mf" and row["passed"] is True
    assert (row["users"], row["items"]) == (300, 200)
    assert row["plan"]["mode"] == "full" and row["plan"]["matrix_pairs"] == 300 * 200
    assert row["peak_rss_mib"] > 0 and row["export_s"] > 0 and row["no_verify_s"] > 0
    # the parity seconds are the bundle's own report
    parity = json.loads((tmp_path / "tiny-mf" / "parity.json").read_text())
    assert row["parity_s"] == parity["seconds"]
