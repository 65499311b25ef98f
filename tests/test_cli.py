"""The CLI end to end on the toy matrix, and --help on every command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from recsys_export.cli import build_parser, main

COMMANDS = ["train", "evaluate", "export", "verify", "inspect", "recommend", "score", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"
            assert action.option_strings[-1] in out


def test_top_level_help_lists_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = root / "mf.pt"
    assert (
        main(["train", "toy", "--preset", "tiny", "--out", str(ckpt), "-q", "--split", "none"]) == 0
    )
    bundle = root / "bundle"
    assert main(["export", str(ckpt), "--out", str(bundle), "-q"]) == 0
    return root, ckpt, bundle


def test_train_reports_metrics_and_writes_checkpoint(tmp_path, capsys):
    out = tmp_path / "d.pt"
    assert (
        main(
            [
                "train",
                "toy",
                "--model",
                "densenet",
                "--preset",
                "tiny",
                "--out",
                str(out),
                "--test-fraction",
                "0.25",
                "-q",
                "-k",
                "2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "test metrics" in text and f"checkpoint: {out}" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert {"model", "popularity", "bias"} <= set(lines)
    assert out.exists()
    assert main(["evaluate", str(out), "--json", "-k", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"model", "popularity", "bias"}
    wanted = {"rmse", "mae", "precision@2", "recall@2", "ndcg@2", "map@2", "coverage@2"}
    assert wanted <= set(results["model"])


def test_export_help_gives_the_default_formats(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: onnx,torchscript)" in out and "opt-in" in out
    assert "--formats all" in out and "--formats onnx,torchscript,pt2" in out


def test_export_formats_all_adds_pt2(toy_run, tmp_path, capsys):
    _, ckpt, _ = toy_run
    bundle = tmp_path / "all"
    assert main(["export", str(ckpt), "--out", str(bundle), "--formats", "all", "-q"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["formats"]) == {"onnx", "torchscript", "pt2"}
    assert sorted(p.name for p in (bundle / "pt2").iterdir()) == [
        "recommend.pt2",
        "score.pt2",
        "score_all.pt2",
    ]
    assert manifest["parity"]["passed"]
    capsys.readouterr()
    assert main(["verify", str(bundle), "--quick", "--no-record"]) == 0
    assert "pt2 " in capsys.readouterr().out


def test_verify_asked_for_pt2_on_a_bundle_without_it(toy_run, capsys):
    """A default bundle has no pt2: asked for alone, one error line (exit 2); next to
    another format, that one is checked and one warning line says why pt2 is not."""
    _, _, bundle = toy_run
    quick = ["--quick", "--no-record", "-q"]
    assert main(["verify", str(bundle), "--formats", "pt2", *quick]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "holds none of the formats ['pt2']" in line and "--formats all" in line
    assert main(["verify", str(bundle), "--formats", "onnx,pt2", *quick]) == 0
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("recsys-export verify: warning: pt2 not checked: the bundle has no")
    assert "PASS" in captured.out and "onnx" in captured.out and "pt2" not in captured.out


def test_train_refuses_to_overwrite(toy_run, capsys):
    _, ckpt, _ = toy_run
    assert main(["train", "toy", "--preset", "tiny", "--out", str(ckpt), "-q"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1


def test_inspect_verify_recommend_score(toy_run, capsys, tmp_path):
    _, ckpt, bundle = toy_run
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "mf" in out and "score_all(users:int64" in out and "parity: PASS" in out
    assert "formats: onnx, torchscript\n" in out  # the default formats: pt2 is opt-in
    assert main(["verify", str(bundle), "--checkpoint", str(ckpt), "-q"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "PASS" in out and "onnx" in out and "torchscript" in out and "pt2" not in out
    assert captured.err == ""  # the formats the bundle holds: nothing to warn about
    assert main(["recommend", str(bundle), "--user", "0", "--user", "3", "-k", "2", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["user"] for r in recs] == [0, 3]  # raw ids as the bundle holds them
    # user 0 rated items 0, 1, 3 of the toy matrix: only item 2 is left to recommend
    assert recs[0]["items"] == [2] and len(recs[1]["items"]) == 2
    assert main(["score", str(bundle), "--user", "0", "--item", "0"]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert line[:2] == ["0", "0"] and abs(float(line[2]) - 5.0) < 0.1
    npy = tmp_path / "all.npy"
    assert main(["score", str(bundle), "--all", "--out", str(npy), "-q"]) == 0
    full = np.load(npy)
    assert full.shape == (5, 4)
    observed = np.array([[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]])
    mask = observed > 0
    assert np.mean((full[mask] - observed[mask]) ** 2) < 0.01
    csv = tmp_path / "top.csv"
    capsys.readouterr()
    assert main(["score", str(bundle), "--all", "--top-k", "2", "--out", str(csv), "-q"]) == 0
    lines = csv.read_text().splitlines()
    assert lines[0] == "user,rank,item,score"


def test_console_script_runs_without_traceback(toy_run):
    _, _, bundle = toy_run
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_export.cli", "recommend", str(bundle), "--user", "nobody"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "nobody" in proc.stderr


def test_ray_engine_needs_top_k(toy_run, tmp_path, capsys):
    _, _, bundle = toy_run
    code = main(["score", str(bundle), "--all", "--engine", "ray", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--engine ray needs --top-k" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
