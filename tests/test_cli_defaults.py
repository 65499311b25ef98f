"""The command line leaves every default to the library (issue 29, one owner per
default): options default to None, help texts name the owner's value, and the typed
requests the commands build resolve None the way the library does."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from recsys_export.bench.config import BenchConfig, config_from_args
from recsys_export.cli import main
from recsys_export.cli.parser import COMMAND_TABLE, build_parser
from recsys_export.core.defaults import DEFAULT_K, DEFAULT_MEMORY_MB, MODEL_KINDS, PARITY_BUDGET
from recsys_export.errors import ConfigError

#: Actions that take no value: their default is what "not given" means.
_FLAGS = (
    argparse._StoreTrueAction,
    argparse._StoreFalseAction,
    argparse.BooleanOptionalAction,
    argparse._HelpAction,
    argparse._VersionAction,
    argparse._SubParsersAction,
)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_defaults_are_resolved_in_the_library() -> None:
    subs = _subparsers()
    assert set(subs) == {c.name for c in COMMAND_TABLE}
    valued = 0
    for name, sub in subs.items():
        for action in sub._actions:
            if isinstance(action, _FLAGS):
                continue
            valued += 1
            assert action.default is None, (name, action.option_strings or action.dest)
    assert valued > 80  # every command's options were walked


@pytest.mark.parametrize(
    "command,words",
    [
        ("score", [f"(default {DEFAULT_MEMORY_MB})", "(default local)"]),
        ("recommend", [f"(default {DEFAULT_K},"]),
        ("evaluate", [f"(default {DEFAULT_K})"]),
        ("train", [f"(default {MODEL_KINDS[0]})", "(default 0)", "(default: last"]),
        ("export", [f"(default {PARITY_BUDGET:,})", "(default: float32 bound)"]),
        ("bench", ["(default 50)", f"(default {','.join(MODEL_KINDS)})"]),
        ("serve", ["(default 127.0.0.1)", "(default 64)"]),
    ],
)
def test_help_names_the_library_default(command: str, words: list[str]) -> None:
    text = " ".join(_subparsers()[command].format_help().split())
    for word in words:
        assert word in text, (command, word)


def test_bench_config_from_options() -> None:
    parser = argparse.ArgumentParser()
    sub = _subparsers()["bench"]
    args = sub.parse_args(["--models", "mf", "--skip", "gpu, numpy", "--users", "7"])
    config = config_from_args(args)
    assert config == BenchConfig(models=("mf",), skip=("gpu", "numpy"), users=7)
    assert config.sizes() == {"users": 7, "items": 400, "factors": 16, "hidden": 32}
    assert config.slow == 0 and config.json_path == Path(".bench/bench-tiny.json")
    full = dataclasses.replace(config, preset="full")
    assert full.slow == 2000 and full.sizes()["items"] == 20_000
    assert config_from_args(parser.parse_args([])) == BenchConfig()


@pytest.mark.parametrize(
    "change,words",
    [
        ({"models": ("svd",)}, "models must be one of mf, densenet"),
        ({"models": ()}, "models is empty"),
        ({"skip": ("gpus",)}, "skip must be one of"),
        ({"k": 401}, "k must be an integer between 1 and 400"),
        ({"items": 0}, "items must be a positive integer"),
        ({"repeat": 0}, "repeat must be a positive integer"),
    ],
)
def test_bench_config_errors(change: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        BenchConfig(**change).sizes()


def test_bench_bad_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--models", "mf,svd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["recsys-export bench: error: models must be one of mf, densenet, got 'svd'"]


def test_train_request_leaves_defaults_to_the_library() -> None:
    pytest.importorskip("torch")
    from recsys_export.cli.train import train_request
    from recsys_export.training.config import default_config
    from recsys_export.training.run import training_config

    request = train_request(_subparsers()["train"].parse_args(["toy"]))
    assert request.model is None and request.preset is None and request.seed is None
    assert request.read.keywords()["duplicates"] == "last"
    assert request.kind == MODEL_KINDS[0]
    assert training_config(request) == default_config()
    tiny = train_request(_subparsers()["train"].parse_args(["toy", "--preset", "tiny"]))
    assert training_config(tiny) == default_config(preset="tiny")
    assert training_config(request, implicit_data=True).objective == "ranking"
