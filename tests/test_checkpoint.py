"""Checkpoints: round trip, weights-only loading, refusal of anything else."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from recsys_export.core.ids import IdMap
from recsys_export.errors import CheckpointError
from recsys_export.models import DenseNet, MatrixFactorization
from recsys_export.models.checkpoint import Checkpoint, load_checkpoint


def _ckpt(model=None):
    model = model or MatrixFactorization(3, 4, 2, biased=True, global_mean=3.0, sparse=False)
    return Checkpoint(
        model=model.eval(),
        user_map=IdMap(["a b", "ü", "c"], "user"),
        item_map=IdMap([10, 20, 30, 40], "item"),
        seen_users=np.array([0, 1, 2]),
        seen_items=np.array([3, 2, 1]),
        config={"model": model.kind, "lr": 0.01},
        metrics={"rmse": 0.9},
        data={"source": "x.csv"},
    )


@pytest.mark.parametrize("model", [None, DenseNet(3, 4, 2, 5, dropout=0.1, global_mean=2.0)])
def test_round_trip(tmp_path, model):
    ck = _ckpt(model)
    ck.save(tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    assert back.kind == ck.kind
    assert back.model.hyperparameters() == ck.model.hyperparameters()
    for (name, a), b in zip(ck.model.state_dict().items(), back.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert back.user_map == ck.user_map and back.item_map == ck.item_map
    assert back.user_map.kind == "str" and back.item_map.kind == "int"
    np.testing.assert_array_equal(back.seen_items, ck.seen_items)
    assert back.metrics == {"rmse": 0.9} and back.config["lr"] == 0.01
    assert not list(tmp_path.glob(".*partial"))  # no temp file left


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "recsys-export-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_not_our_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a recsys-export checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    _ckpt().save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_missing_and_text_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "r.csv").write_text("user,item,rating\n1,2,3\n")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "r.csv")


def test_newer_format_refused(tmp_path):
    path = tmp_path / "m.pt"
    _ckpt().save(path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="newer recsys-export"):
        load_checkpoint(path)


def test_non_finite_weights_refused(tmp_path):
    ck = _ckpt()
    with torch.no_grad():
        ck.model.user_factors.weight[0, 0] = float("nan")
    ck.save(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(tmp_path / "nan.pt")


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _ckpt().save(tmp_path / "no" / "m.pt")


def test_checkpoint_is_a_zip_of_tensors_only(tmp_path):
    """weights_only loading works because the file holds tensors and plain containers."""
    path = tmp_path / "m.pt"
    _ckpt().save(path)
    assert zipfile.is_zipfile(path)
    assert isinstance(torch.load(path, weights_only=True), dict)


def test_saved_checkpoint_gets_umask_permissions(tmp_path):
    """A checkpoint is readable as any new file is (0o666 less the umask), not 0600."""
    import stat

    old = os.umask(0o022)
    try:
        path = _ckpt().save(tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left
