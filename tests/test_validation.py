"""The shared argument checks (``recsys_export.core.validation``) and the training
configuration's use of them (``TrainConfig.validate``: one table, no hand-rolled checks).

Torch-free: ``training.config`` imports no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_export.core.validation import (
    check_finite,
    check_fraction,
    check_int,
    check_nonnegative,
    check_positive,
)
from recsys_export.errors import BundleError, ConfigError
from recsys_export.training.config import TrainConfig, default_config


@pytest.mark.parametrize(
    "check,good,bad,words",
    [
        (check_positive, [1, 0.5, np.float32(2.0)], [0, -1.0, math.inf, math.nan, True, "1"],
         "x must be positive"),
        (check_nonnegative, [0, 0.0, 3, np.int64(2)], [-1e-9, math.inf, math.nan, False, None],
         "x must be >= 0"),
        (check_fraction, [0, 0.0, 0.5, 0.999], [1.0, -0.1, math.nan, math.inf, True, "0.5"],
         "x must be in [0, 1)"),
        (check_finite, [0, -3.5, 1e300, np.float64(2)], [math.nan, -math.inf, None, "1", True],
         "x must be a finite number"),
    ],
)  # fmt: skip
def test_float_checks_return_floats_and_name_what_is_wrong(check, good, bad, words) -> None:
    for value in good:
        out = check("x", value)
        assert isinstance(out, float) and out == float(value)
    for value in bad:
        with pytest.raises(ConfigError) as info:
            check("x", value)
        assert str(info.value).startswith(words), str(info.value)
        assert f"got {value!r}" in str(info.value)


@pytest.mark.parametrize("check", [check_positive, check_nonnegative, check_fraction, check_finite])
def test_float_checks_let_none_through_only_when_asked(check) -> None:
    assert check("x", None, none_ok=True) is None
    with pytest.raises(ConfigError, match="or None, got nan"):
        check("x", math.nan, none_ok=True)
    with pytest.raises(BundleError, match=r"got inf \(see --x\)$"):
        check("x", math.inf, none_ok=True, hint=" (see --x)", error=BundleError)


def test_check_int_refuses_floats_and_bools_and_says_the_bound() -> None:
    assert check_int("n", np.int64(3), low=1) == 3 and type(check_int("n", 3, low=1)) is int
    for value in (0, 2.0, True, None):
        with pytest.raises(ConfigError, match=r"n must be a positive integer \(>= 1\), got"):
            check_int("n", value, low=1)
    with pytest.raises(ConfigError, match="n must be an integer >= 0 or None, got -1"):
        check_int("n", -1, low=0, none_ok=True)


@pytest.mark.parametrize(
    "change,words",
    [
        ({"model": "svd"}, "model must be one of mf, densenet, got 'svd'"),
        ({"objective": "clicks"}, "objective must be one of ranking, rating"),
        ({"loss": "hinge"}, "loss must be one of softmax, bpr"),
        ({"positives": "some"}, "positives must be one of relevant, all"),
        ({"weighting": "log"}, "weighting must be one of rating, binary"),
        ({"mode": "online"}, "mode must be one of minibatch, post"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of adam, sparse_adam, sgd"),
        ({"negatives": 0}, "negatives must be a positive integer"),
        ({"full_softmax_items": 0}, "full_softmax_items must be"),
        ({"k": 0}, "k must be a positive integer"),
        ({"valid_users": 0}, "valid_users must be"),
        ({"validate_every": 0}, "validate_every must be"),
        ({"n_factors": 0}, "n_factors must be a positive integer (>= 1), got 0"),
        ({"hidden": 2.5}, "hidden must be a positive integer"),
        ({"epochs": 0}, "epochs must be"),
        ({"threads": 0}, "threads must be"),
        ({"patience": -1}, "patience must be an integer >= 0, got -1"),
        ({"batch_size": -1}, "batch_size must be an integer >= 0 or None, got -1 (0: full batch)"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"select_tolerance": -0.1}, "select_tolerance must be in [0, 1)"),
        ({"min_gain": 1.5}, "min_gain must be in [0, 1)"),
        ({"l2": -1.0}, "l2 must be >= 0, got -1.0"),
        ({"weight_decay": math.inf}, "weight_decay must be >= 0, got inf"),
        ({"average_epochs": math.nan}, "average_epochs must be >= 0"),
        ({"lr": 0.0}, "lr must be positive, got 0.0"),
        ({"score_scale": math.inf}, "score_scale must be positive, got inf"),
        ({"min_rating": math.nan}, "min_rating must be a finite number or None, got nan"),
        ({"threshold": -math.inf}, "threshold must be a finite number or None"),
        ({"init_std": 0.0}, "init_std must be positive or None, got 0.0"),
        ({"objective": "ranking", "mode": "post"}, "the post's loop trains the rating objective"),
        ({"objective": "ranking", "optimizer": "sparse_adam"}, "is for --objective rating"),
        ({"model": "densenet", "optimizer": "sparse_adam"}, "is for --model mf"),
    ],
)
def test_train_config_refuses_each_bad_field(change: dict, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**change).validate()
    assert words in str(info.value)


def test_train_config_accepts_every_recipe_and_the_edges() -> None:
    for model in ("mf", "densenet"):
        for objective in ("ranking", "rating"):
            default_config(model, objective).validate()
    for preset in ("post", "tiny"):
        default_config("mf", preset=preset).validate()
    TrainConfig(batch_size=0, init_std=None, threshold=3.5, min_rating=-1.0, patience=0).validate()


def test_default_config_names_a_bad_preset_or_objective() -> None:
    with pytest.raises(ConfigError, match="preset must be one of default, post, tiny, got 'x'"):
        default_config("mf", preset="x")
    with pytest.raises(ConfigError, match="objective must be one of ranking, rating"):
        default_config("mf", "clicks")
