"""Ranking: objectives that find planted structure, honest splits, baselines, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys_export import data
from recsys_export.cli import main
from recsys_export.errors import ConfigError, DataError
from recsys_export.models import MatrixFactorization
from recsys_export.training.baselines import BiasBaseline, PopularityBaseline
from recsys_export.training.config import default_config
from recsys_export.training.evaluate import (
    check_threshold,
    compare_with_baselines,
    concat,
    default_threshold,
    evaluate,
    ranking_metrics,
)
from recsys_export.training.experiment import evaluate_checkpoint, train_checkpoint
from recsys_export.training.fit import fit


@pytest.fixture(scope="module")
def planted():
    """600 users, 300 items, 6 taste groups; popularity carries no signal."""
    r = data.synthetic_interactions(600, 300, n_groups=6, per_user=20, noise=0.1, seed=3)
    parts = data.three_way_split(r, "random", 0.2, 0.1, seed=0)
    return r, [r.subset(parts == p) for p in (data.TRAIN, data.VALID, data.TEST)]


def _random_mf(r: data.Ratings) -> MatrixFactorization:
    torch.manual_seed(0)
    return MatrixFactorization(r.n_users, r.n_items, 8, init_std=0.1).eval()


@pytest.mark.parametrize(
    "kind,loss,extra",
    [
        ("mf", "softmax", {}),
        ("mf", "softmax", {"full_softmax_items": 50, "negatives": 64}),  # sampled softmax
        ("mf", "bpr", {"batch_size": 256, "lr": 1e-2, "l2": 1e-4}),
        ("densenet", "softmax", {"epochs": 20}),
    ],
)
def test_ranking_objective_recovers_planted_groups(planted, kind, loss, extra):
    r, (train, valid, test) = planted
    cfg = default_config(kind, "ranking", loss=loss, epochs=extra.pop("epochs", 15), **extra)
    model, history = fit(train, valid, cfg, progress=False)
    known_r = concat(train, valid)
    trained = evaluate(model, known_r, test, k=10)
    rand = evaluate(_random_mf(r), known_r, test, k=10)
    pop = evaluate(PopularityBaseline().fit(known_r), known_r, test, k=10)
    # ~4 test items per user, ~3.6 of them among the ~36 unseen items of the user's
    # group: ranking the group first gives P@10 ~ 0.1; a random list (and popularity,
    # which has no signal here) ~ 4 * 10 / 286 / 10 ~ 0.014
    assert rand["precision@10"] < 0.035 and pop["precision@10"] < 0.035
    assert trained["precision@10"] > 0.07, trained
    assert trained["ndcg@10"] > 3 * max(rand["ndcg@10"], pop["ndcg@10"])
    assert history.valid_metric == "ndcg@10" and history.valid_scores


def test_three_way_split_never_leaks_test_rows(monkeypatch):
    r = data.synthetic_ratings(200, 100, density=0.1, seed=1)
    parts = data.three_way_split(r, "random", 0.2, 0.1, seed=5)
    _, test_two_way = data.split(r, "random", 0.2, seed=5)
    test = r.subset(parts == data.TEST)
    # the test rows are exactly those of the two-way split; validation is carved from train
    assert np.array_equal(test.users, test_two_way.users)
    assert np.array_equal(test.items, test_two_way.items)
    n_valid = int((parts == data.VALID).sum())
    assert n_valid == round(0.1 * int((parts != data.TEST).sum()))
    # fit (selection included) sees no test row: capture what it gets
    seen = {}

    def spy(train, valid, cfg, **kw):
        seen["train"], seen["valid"] = train, valid
        return real_fit(train, valid, cfg, **kw)

    import recsys_export.training.experiment as experiment

    real_fit = experiment.fit
    monkeypatch.setattr(experiment, "fit", spy)
    cfg = default_config("mf", "ranking", epochs=2, n_factors=4)
    ckpt, _ = train_checkpoint(r, cfg, seed=5, progress=False)
    pairs = lambda x: set(zip(x.users.tolist(), x.items.tolist()))  # noqa: E731
    test_pairs = pairs(test)
    assert not pairs(seen["train"]) & test_pairs and not pairs(seen["valid"]) & test_pairs
    assert not pairs(seen["train"]) & pairs(seen["valid"])
    # the checkpoint records the three parts
    assert np.array_equal(ckpt.seen_parts, parts)
    assert ckpt.metrics["parts"] == {
        "train": int((parts == 0).sum()),
        "valid": n_valid,
        "test": len(test),
    }


def test_time_split_validation_is_latest_of_training_rows():
    r = data.synthetic_ratings(50, 40, density=0.3, seed=2)
    parts = data.three_way_split(r, "time", 0.2, 0.25, seed=0)
    for u in range(r.n_users):
        mine = r.users == u
        ts = {p: r.timestamps[mine & (parts == p)] for p in (0, 1, 2)}
        if len(ts[1]) and len(ts[0]):
            assert ts[0].max() <= ts[1].min()
        if len(ts[1]) and len(ts[2]):
            assert ts[1].max() <= ts[2].min()


def test_split_errors():
    r = data.synthetic_ratings(20, 10, density=0.3, seed=2)
    with pytest.raises(DataError, match="valid_fraction"):
        data.three_way_split(r, "random", 0.2, 1.0)
    parts = data.three_way_split(r, "none", valid_fraction=0.0)
    assert (parts == data.TRAIN).all()


def test_baselines_by_hand():
    r = data.from_matrix(np.array([[5, 3, 0], [4, 2, 1], [0, 2, 0]], dtype=float))
    pop = PopularityBaseline().fit(r)
    assert pop.score_all(np.array([0, 2])).tolist() == [[2, 3, 1], [2, 3, 1]]
    bias = BiasBaseline(damping=0.0).fit(r)
    mean = r.ratings.mean()
    # with no damping an item's bias is its mean residual
    assert bias.item_bias[0] == pytest.approx((5 + 4) / 2 - mean)
    assert bias.predict(np.array([0]), np.array([0]))[0] == pytest.approx(
        mean + bias.user_bias[0] + bias.item_bias[0], rel=1e-6
    )
    # with validation rows the damping comes from the grid, chosen by validation RMSE
    train, valid = data.random_split(data.synthetic_ratings(100, 50, density=0.2), 0.2)
    chosen = BiasBaseline().fit(train, valid)
    errs = {}
    for d in (1.0, 3.0, 10.0, 25.0, 50.0):
        b = BiasBaseline(d).fit(train)
        errs[d] = float(np.mean((b.predict(valid.users, valid.items) - valid.ratings) ** 2))
    assert chosen.damping == min(errs, key=errs.get)


def test_ranking_metrics_by_hand():
    topk = np.array([[1, 2, 3], [4, 5, -1]])
    relevant = [np.array([2, 9]), np.array([7])]
    m = ranking_metrics(topk, relevant, 3)
    assert m["precision@3"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["recall@3"] == pytest.approx((1 / 2 + 0) / 2)
    # user 0: hit at rank 2 -> AP = (1/2) / min(2, 3); user 1: no hit
    assert m["map@3"] == pytest.approx((0.5 / 2) / 2)
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3) / ideal) / 2)


def test_coverage_and_median_popularity():
    r = data.from_matrix(np.array([[5, 0, 0, 0], [5, 4, 0, 0], [5, 4, 3, 0]], dtype=float))
    test = data.from_matrix(np.array([[0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]], dtype=float))
    m = evaluate(PopularityBaseline().fit(r), r, test, k=1, threshold=4)
    # each user's best unseen item by popularity: 1, 2, 3
    assert m["distinct_items@1"] == 3 and m["coverage@1"] == pytest.approx(3 / 4)
    assert m["median_train_count@1"] == 1.0  # counts of items 1, 2, 3 are 2, 1, 0


def test_threshold_default_and_errors():
    r = data.synthetic_ratings(20, 10, density=0.3, seed=2)
    r.ratings = np.clip(np.round(r.ratings), 1, 5).astype(np.float32)
    r.ratings[0] = 5
    assert default_threshold(r) == 4.0
    r10 = r.subset(np.arange(len(r)))
    r10.ratings = r.ratings * 2
    assert default_threshold(r10) == 8.0
    with pytest.raises(ConfigError, match="above the highest rating"):
        check_threshold(6, r)
    implicit = data.synthetic_interactions(20, 10, n_groups=2, per_user=3)
    assert default_threshold(implicit) == 1.0


def test_compare_with_baselines_reports_all_three(planted):
    _, (train, valid, test) = planted
    model, _ = fit(train, valid, default_config("mf", epochs=2), progress=False)
    out = compare_with_baselines(model, train, valid, test, k=5)
    assert set(out) == {"model", "popularity"}  # implicit data: no rating baseline
    r = data.synthetic_ratings(100, 40, density=0.2, seed=0)
    tr, te = data.random_split(r, 0.2)
    out = compare_with_baselines(model_for(r), tr, None, te, k=5)
    assert set(out) == {"model", "popularity", "bias"}
    assert out["bias"]["rmse"] > 0 and "rmse" not in out["popularity"]


def model_for(r: data.Ratings) -> MatrixFactorization:
    return _random_mf(r)


def test_implicit_file_trains_with_ranking_only(tmp_path, capsys):
    path = tmp_path / "clicks.csv"
    r = data.synthetic_interactions(120, 60, n_groups=3, per_user=8, seed=1)
    lines = ["user,item"] + [f"u{u},i{i}" for u, i in zip(r.users, r.items)]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.pt"
    assert main(["train", str(path), "--out", str(out), "-q", "--epochs", "3"]) == 0
    text = capsys.readouterr().out
    assert "model" in text and "popularity" in text and "bias" not in text
    code = main(["train", str(path), "--objective", "rating", "--out", str(out), "--force", "-q"])
    assert code == 2
    assert "no rating column" in capsys.readouterr().err


def test_implicit_flag_keeps_ratings_above_min(tmp_path, capsys):
    path = tmp_path / "r.csv"
    rng = np.random.default_rng(0)
    rows = [f"{u},{i},{rng.integers(1, 6)}" for u in range(60) for i in range(0, 40, 3)]
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    out = tmp_path / "m.pt"
    argv = ["train", str(path), "--implicit", "--min-rating", "4", "--out", str(out), "-q"]
    assert main([*argv, "--epochs", "2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    n_pos = sum(int(r.split(",")[2]) >= 4 for r in rows)
    assert sum(metrics["parts"].values()) == n_pos
    assert "rmse" not in metrics


def _write(path, pairs):
    path.write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in pairs))


def test_train_and_evaluate_with_a_separate_test_file(tmp_path, capsys):
    r = data.synthetic_ratings(80, 30, density=0.3, seed=4)
    tr, te = data.random_split(r, 0.2, seed=1)
    base, test = tmp_path / "u1.base", tmp_path / "u1.test"
    _write(base, zip(tr.user_map.raw_ids[tr.users], tr.item_map.raw_ids[tr.items], tr.ratings))
    extra = [(999, 0, 5.0), (0, 777, 4.0), (999, 778, 3.0)]  # unknown user, items
    known = zip(te.user_map.raw_ids[te.users], te.item_map.raw_ids[te.items], te.ratings)
    _write(test, [*known, *extra])
    ckpt = tmp_path / "m.pt"
    argv = ["train", str(base), "--test", str(test), "--out", str(ckpt), "-q", "--epochs", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (
        "dropped 3 rows: 2 with an unknown user (1 distinct), 1 with a known user but an "
        "unknown item (1 distinct)"
    ) in text
    assert main(["evaluate", str(ckpt), "--test", str(test), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["test_mapping"]["dropped"] == 3
    assert results["test_mapping"]["kept"] == len(te) - int(
        (~np.isin(te.users, tr.users) | ~np.isin(te.items, tr.items)).sum()
    )
    assert results["model"]["n_test"] == results["test_mapping"]["kept"]
    # a test file sharing no id with the checkpoint is an error, not a silent empty report
    _write(test, [(5000, 6000, 4.0), (5001, 6001, 3.0)])
    assert main(["evaluate", str(ckpt), "--test", str(test)]) == 2
    assert "none of its 2 rows" in capsys.readouterr().err


def test_evaluate_checkpoint_reproduces_training_report(tmp_path):
    r = data.synthetic_ratings(100, 40, density=0.2, seed=0)
    ckpt, results = train_checkpoint(r, default_config("mf", epochs=3), progress=False)
    path = ckpt.save(tmp_path / "m.pt")
    from recsys_export.models.checkpoint import load_checkpoint

    again = evaluate_checkpoint(load_checkpoint(path))
    for name in ("model", "popularity", "bias"):
        assert again[name]["ndcg@10"] == pytest.approx(results[name]["ndcg@10"])
    assert again["bias"]["rmse"] == pytest.approx(results["bias"]["rmse"])


def test_evaluate_threshold_above_scale_is_a_clear_error(tmp_path, capsys):
    r = data.synthetic_ratings(60, 30, density=0.2, seed=0)
    ckpt, _ = train_checkpoint(r, default_config("mf", epochs=1), progress=False)
    path = ckpt.save(tmp_path / "m.pt")
    assert main(["evaluate", str(path), "--threshold", "9"]) == 2
    err = capsys.readouterr().err
    assert "above the highest rating" in err and len(err.strip().splitlines()) == 1


def test_ranking_bench_tiny(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ranking_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "ranking_bench.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main(["--tiny", "--models", "mf", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["method"], r["objective"]) for r in report["files"][0]["rows"]}
    assert {("mf", "ranking"), ("mf", "rating"), ("popularity", "baseline")} <= rows
    assert ("bias", "baseline") in rows
    text = capsys.readouterr().out
    assert "ndcg@10" in text and "popularity" in text


@pytest.mark.parametrize("kind", ["mf", "densenet"])
def test_fold_scale_multiplies_every_entry_point(kind):
    from recsys_export.models import build_model
    from recsys_export.training.objectives import fold_scale

    hp = {"n_users": 7, "n_items": 5, "n_factors": 3, "global_mean": 0.7}
    hp.update({"biased": True} if kind == "mf" else {"hidden": 4})
    torch.manual_seed(0)
    model = build_model(kind, **hp).eval()
    users, items = torch.tensor([0, 3, 6]), torch.tensor([4, 0, 2])
    before = model(users, items), model.score_all(users)
    fold_scale(model, 2.5)
    torch.testing.assert_close(model(users, items), 2.5 * before[0])
    torch.testing.assert_close(model.score_all(users), 2.5 * before[1])


def test_checkpoint_without_recorded_parts(tmp_path, capsys):
    """Checkpoints of older versions: evaluate needs --test, and ranks without ratings."""
    from recsys_export.models.checkpoint import Checkpoint

    r = data.synthetic_ratings(60, 30, density=0.3, seed=0)
    tr, te = data.random_split(r, 0.2, seed=0)
    ckpt = Checkpoint(
        model=_random_mf(r),
        user_map=r.user_map,
        item_map=r.item_map,
        seen_users=tr.users,
        seen_items=tr.items,
    )
    path = ckpt.save(tmp_path / "old.pt")
    assert main(["evaluate", str(path)]) == 2
    assert "--test FILE" in capsys.readouterr().err
    test = tmp_path / "test.csv"
    _write(test, zip(te.user_map.raw_ids[te.users], te.item_map.raw_ids[te.items], te.ratings))
    assert main(["evaluate", str(path), "--test", str(test), "--json", "--threshold", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert {"model", "popularity", "test_mapping"} <= set(results)
    assert results["model"]["ranked_users"] > 0


def test_weight_average_moves_towards_live_weights_and_swaps() -> None:
    from recsys_export.training.history import WeightAverage

    model = MatrixFactorization(2, 3, 1, biased=False, sparse=False)
    with torch.no_grad():
        model.user_factors.weight.zero_()
    average = WeightAverage(model, horizon_steps=4)
    with torch.no_grad():
        model.user_factors.weight.fill_(1.0)
    average.update()  # a quarter of the way from 0 to 1
    average.swap()
    assert torch.allclose(model.user_factors.weight, torch.full((2, 1), 0.25))
    average.swap()
    assert torch.allclose(model.user_factors.weight, torch.ones(2, 1))


@pytest.mark.parametrize("kind", ["mf", "densenet"])
def test_averaged_weights_are_the_ones_kept(kind: str) -> None:
    """With an average that barely moves, the returned model is the initial one: what is
    kept (and exported) is the average, not the last step's weights."""
    from recsys_export.training.fit import build_from_config

    r = data.synthetic_interactions(60, 40, n_groups=3, per_user=8, noise=0.1, seed=1)
    cfg = default_config(kind, epochs=2, patience=0, average_epochs=1e9, score_scale=1.0)
    model, _ = fit(r, None, cfg, progress=False)
    torch.manual_seed(cfg.seed)
    initial = build_from_config(cfg, r)
    for name, tensor in initial.state_dict().items():
        assert torch.allclose(model.state_dict()[name], tensor, atol=1e-6), name
    moved, _ = fit(
        r, None, default_config(kind, epochs=2, patience=0, score_scale=1.0), progress=False
    )
    assert not torch.allclose(moved.user_factors.weight, initial.user_factors.weight)


@pytest.mark.parametrize(
    ("n", "size"), [(10, 10), (610, 16), (2_000, 16), (16_554, 64), (100_000, 128), (10**7, 512)]
)
def test_batch_sized_from_the_number_of_users(n: int, size: int) -> None:
    from recsys_export.training.config import batch_size_for

    assert batch_size_for(default_config("densenet"), n) == size
    assert batch_size_for(default_config("densenet", batch_size=7), n) == min(7, n)


def test_early_stopping_keeps_the_most_covering_of_tied_epochs() -> None:
    """With a tolerance, an epoch since the best whose score is within it ties, and the
    tied epoch with the highest tiebreak is kept; a new best resets the choice; patience
    counts from the last new best that beat the previous progress by more than min_gain
    (tiny gains on a plateau do not keep training alive); tolerance 0 keeps the best
    epoch and min_gain 0 counts every new best as progress."""
    from recsys_export.training.history import EarlyStopping, History

    model = MatrixFactorization(2, 3, 2)

    def run(
        tolerance: float, series: list[tuple[float, float]], min_gain: float | None = None
    ) -> tuple[History, float]:
        history = History()
        gain = tolerance if min_gain is None else min_gain
        stopping = EarlyStopping(history, 3, True, tolerance=tolerance, min_gain=gain)
        stop = False
        for epoch, (score, coverage) in enumerate(series):
            with torch.no_grad():
                model.user_factors.weight.fill_(epoch)
            stop = stopping.update(model, epoch, score, coverage)
        stopping.restore(model)
        assert stop == history.stopped_early
        return history, float(model.user_factors.weight[0, 0])

    series = [(0.10, 50), (0.20, 100), (0.199, 150), (0.18, 400), (0.198, 140), (0.197, 200)]
    history, weights = run(0.02, series)
    # 0.199 and 0.198 and 0.197 tie with 0.20 (band 0.196); 0.18 does not
    assert history.best_epoch == 6 and weights == 5.0 and history.stopped_early
    history, weights = run(0.0, series)
    assert history.best_epoch == 2 and weights == 1.0
    # a new best resets: the earlier tied epoch (coverage 300) is not kept over it
    history, _ = run(0.02, [(0.20, 100), (0.199, 300), (0.25, 120), (0.249, 110)])
    assert history.best_epoch == 3 and not history.stopped_early
    # a plateau of new bests within the band of the last progress (0.20 -> 0.204)
    plateau = [(0.10, 10), (0.20, 20), (0.201, 30), (0.202, 40), (0.2015, 35)]
    history, weights = run(0.02, plateau)
    assert history.stopped_early and history.best_epoch == 4 and weights == 3.0
    history, _ = run(0.0, plateau)
    assert not history.stopped_early and history.best_epoch == 4
    # a gain past the band is progress again
    history, _ = run(0.02, plateau[:4] + [(0.21, 50), (0.209, 45), (0.2095, 44)])
    assert not history.stopped_early and history.best_epoch == 5
    # the tie band and the gain that counts as progress are separate: a 2% band with
    # min_gain 0.4% keeps training on the plateau's +0.5% steps and still keeps the most
    # covering tied epoch
    climb = [(0.10, 10), (0.20, 20), (0.201, 30), (0.202, 40), (0.2015, 45), (0.198, 50)]
    history, weights = run(0.02, climb, min_gain=0.004)
    assert not history.stopped_early and history.best_epoch == 6 and weights == 5.0
    history, _ = run(0.02, climb)
    assert history.stopped_early


def test_patience_counts_epochs_when_only_some_are_validated() -> None:
    """Updates every other epoch: patience 3 stops at the first validated epoch 3 or
    more epochs after the last progress, not after 3 validations."""
    from recsys_export.training.history import EarlyStopping, History

    model = MatrixFactorization(2, 3, 2)
    history = History()
    stopping = EarlyStopping(history, patience=3, higher_is_better=True)
    assert not stopping.update(model, 1, 0.1)  # progress at epoch 1 (0-based)
    assert not stopping.update(model, 3, 0.1)  # 2 epochs without progress
    assert stopping.update(model, 5, 0.1)  # 4 >= 3
    assert history.valid_epochs == [2, 4, 6] and history.best_epoch == 2


def test_validate_every_validates_those_epochs_and_the_last() -> None:
    r = data.synthetic_ratings(60, 40, n_ratings=1500, seed=3)
    train, valid = data.random_split(r, 0.2, seed=0)
    cfg = default_config("mf", "ranking", epochs=5, patience=0, validate_every=2,
                         n_factors=4, batch_size=16)  # fmt: skip
    model, history = fit(train, valid, cfg, progress=False)
    assert len(history.train_loss) == 5
    assert history.valid_epochs == [2, 4, 5] and len(history.valid_scores) == 3
    assert history.best_epoch in history.valid_epochs
    with pytest.raises(ConfigError, match="validate_every"):
        default_config("mf", "ranking", validate_every=0)


@pytest.mark.parametrize(
    "flag,field,recipe,value,bad",
    [
        ("--select-tolerance", "select_tolerance", 0.05, "0", "1.5"),
        ("--min-gain", "min_gain", 0.01, "0.02", "-1"),
        ("--validate-every", "validate_every", 3, "4", "0"),
    ],
)
def test_stopping_flags_reach_the_config_and_are_checked(
    flag: str, field: str, recipe: float, value: str, bad: str
) -> None:
    from recsys_export.cli.parser import build_parser
    from recsys_export.cli.train import train_request
    from recsys_export.training.run import training_config

    def config(*extra: str) -> object:
        return training_config(train_request(build_parser().parse_args(["train", "toy", *extra])))

    assert getattr(config("--model", "densenet"), field) == recipe  # the recipe's
    assert getattr(config("--model", "densenet", flag, value), field) == float(value)
    with pytest.raises(ConfigError, match=field):
        config(flag, bad)
