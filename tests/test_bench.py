"""Smoke test of the side-by-side benchmark at a tiny size (no timing asserts)."""

from __future__ import annotations

import argparse
import json

import pytest

from recsys_export import bench

pytestmark = pytest.mark.slow  # each runs a benchmark end to end (20-90 s on 2 busy cores)


def test_bench_tiny(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(
        ["--users", "40", "--items", "60", "--factors", "4", "--hidden", "8", "--seen", "5"]
        + ["--repeat", "1", "--calls", "20", "--json", str(out), "--plot", str(tmp_path / "b.png")]
    )
    assert bench.run(args) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "score_all" in text and "single_user" in text and "ceiling" in text
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1
    assert set(report["models"]) == {"mf", "densenet"}
    gpu = set() if "skipped" in report["gpu"] else {"gpu_ceiling", "gpu_torch_engine"}
    if not gpu:  # no CUDA here: one line on stderr, the JSON says why
        skipped = [ln for ln in captured.err.splitlines() if "GPU rows skipped" in ln]
        assert len(skipped) == 1 and report["gpu"]["skipped"] in skipped[0]
    for kind, res in report["models"].items():
        mf = kind == "mf"
        intra = set() if mf else {"runtime_intra_op"}
        variants = {"runtime_fp16", "runtime_int8"} if mf else {"runtime_fp16"}
        assert set(res["score_all"]) == {
            "ceiling",
            "numpy",
            "torch_eager",
            "torchscript",
            "pt2",
            "runtime",
            "runtime_fallback",
            *intra,
            *variants,
            *gpu,
        }
        today = {"runtime_topk_kernel"} if mf else set()
        assert set(res["recommend_all"]) == {
            "runtime",
            "runtime_fallback",
            "numpy",
            *today,
            *variants,
            *gpu,
        }
        assert set(res["single_user"]) == {
            "runtime",
            "runtime_raw_ids",
            "runtime_fallback",
            "torch_eager",
            *variants,
            *({"ceiling", "implicit"} if mf else set()),
        }
        for section in ("score_all", "recommend_all"):
            for row in res[section].values():
                assert {"median_s", "min_s", "max_s", "ns_per_pair", "gflops"} <= set(row)
                assert row["ratio_to_ceiling"] > 0
        for name, row in res["single_user"].items():
            if name == "implicit" and "skipped" in row:  # not installed: no dependency
                assert "pip install implicit" in row["skipped"]
                continue
            assert row["p50_us"] > 0 and row["calls"] == 2000
            assert ("ratio_to_ceiling" in row) == mf
        assert res["export_seconds"] and res["peak_rss_mib"] > 0
    assert report["machine"]["cpu"]
    assert set(bench.SCHEMA["ROW"]) >= {"median_s", "ns_per_pair", "ratio_to_ceiling"}


def test_bench_skip_and_bad_options(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "b.json"
    args = parser.parse_args(
        ["--users", "20", "--items", "30", "--factors", "4", "--hidden", "4", "--seen", "3"]
        + ["--models", "mf", "--repeat", "1", "--calls", "10", "--json", str(out)]
        + ["--skip", "torch,torchscript,pt2,numpy,fallback,precision,implicit"]
    )
    assert bench.run(args) == 0
    res = json.loads(out.read_text())["models"]["mf"]
    assert "skipped" in res["score_all"]["torch_eager"]
    assert "runtime_int8" not in res["score_all"]
    assert res["single_user"]["implicit"] == {"skipped": "--skip implicit"}
    assert "ns_per_pair" in res["score_all"]["runtime"]
    assert bench.run(parser.parse_args(["--models", "nope"])) == 2


def test_bench_gpu_rows_code_path_on_cpu(tmp_path, monkeypatch, capsys):
    """The GPU rows' code, pointed at the CPU (no CUDA here): engine next to ceiling."""
    monkeypatch.setattr(bench, "_GPU_DEVICE", "cpu")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "b.json"
    args = parser.parse_args(
        ["--users", "30", "--items", "40", "--factors", "4", "--hidden", "4", "--seen", "3"]
        + ["--repeat", "1", "--calls", "10", "--json", str(out)]
        + ["--skip", "torch,torchscript,pt2,numpy,fallback"]
    )
    assert bench.run(args) == 0
    assert "GPU rows on cpu" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["gpu"] == {"device": "cpu", "name": "cpu"}
    for res in report["models"].values():
        for section in ("score_all", "recommend_all"):
            rows = res[section]
            assert rows["gpu_ceiling"]["ratio_to_ceiling"] == 1.0
            assert rows["gpu_torch_engine"]["ratio_to_ceiling"] > 0
            assert rows["gpu_torch_engine"]["device"] == "cpu"
            assert rows["gpu_torch_engine"]["users"] == 30
    # --skip gpu: recorded, no rows
    args.skip = "gpu"
    assert bench.run(args) == 0
    report = json.loads(out.read_text())
    assert report["gpu"] == {"skipped": "--skip gpu"}
    assert "gpu_torch_engine" not in report["models"]["mf"]["score_all"]


def test_densenet_recipe_script_tiny(tmp_path, capsys):
    """The calibration script (the targets' two probe recipes next to the runtime) runs."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "densenet_recipe.py"
    spec = importlib.util.spec_from_file_location("densenet_recipe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "recipe.json"
    argv = ["--users", "40", "--items", "1100", "--factors", "4", "--hidden", "8", "--seen", "3"]
    assert mod.main([*argv, "--calls", "20", "--repeat", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert set(rows) == {
        "recipe_score_all",
        "runtime_score_all",
        "recipe_single_user",
        "runtime_single_user",
    }
    # 40 users -> two whole blocks of 16; 1100 items -> two whole tiles of 500
    assert rows["recipe_score_all"]["pairs"] == 32 * 1000
    assert rows["runtime_score_all"]["pairs"] == 40 * 1100
    assert rows["runtime_single_user"]["calls"] == 20
    assert "scaled_target" not in rows["runtime_score_all"]  # not the recorded sizes
    for name in rows:
        assert name in text
