"""Bring your own model, converted path: the post's classes as our models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys_export.byom.generic import _eval_mode, _first_line
from recsys_export.checkpoint import check_finite_weights, load_weights_only
from recsys_export.errors import (
    CheckpointError,
    ConfigError,
    RecsysExportError,
)
from recsys_export.models import (
    BaseModel,
    DenseNet,
    MatrixFactorization,
)

_MF_REQUIRED = ("user_factors.weight", "item_factors.weight")
_MF_OPTIONAL = ("user_bias.weight", "item_bias.weight", "global_mean")
_DN_REQUIRED = (
    "user_factors.weight",
    "item_factors.weight",
    "linear1.weight",
    "linear1.bias",
    "linear2.weight",
    "linear2.bias",
)
_DN_OPTIONAL = ("global_mean",)


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def _key_problems(
    state: Mapping[str, Any], required: Sequence[str], optional: Sequence[str]
) -> str | None:
    missing = [k for k in required if k not in state]
    extra = [k for k in state if k not in required and k not in optional]
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if extra:
        parts.append("unexpected " + ", ".join(extra))
    return "; ".join(parts) or None


def _check_tensors(state: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, not a tensor")
        check_finite_weights({key: value}, source)
        out[str(key)] = value.detach().to("cpu", torch.float32)
    return out


def model_from_state_dict(
    state: Mapping[str, Any], kind: str, *, source: str = "state dict"
) -> BaseModel:
    """Our model of ``kind`` (``"mf"`` or ``"densenet"``) holding a post-style state dict.

    Sizes come from the tensors: ``n_users``/``n_factors`` from ``user_factors.weight``,
    ``n_items`` from ``item_factors.weight``, ``hidden`` from ``linear1.weight``.

    Raises
    ------
    CheckpointError
        Names or shapes differ from the post's class (the message lists what is missing,
        unexpected or mis-shaped), or a weight is not finite.
    ConfigError
        ``kind`` is neither ``"mf"`` nor ``"densenet"``.
    """
    if kind not in ("mf", "densenet"):
        raise ConfigError(f"unknown model kind {kind!r}; choose mf or densenet")
    required, optional = (
        (_MF_REQUIRED, _MF_OPTIONAL) if kind == "mf" else (_DN_REQUIRED, _DN_OPTIONAL)
    )
    cls_name = "MatrixFactorization" if kind == "mf" else "DenseNet"
    problem = _key_problems(state, required, optional)
    if problem:
        raise CheckpointError(
            f"{source} does not match the post's {cls_name} ({problem}); expected "
            f"{', '.join(required)}"
            + (f" and optionally {', '.join(optional)}" if optional else "")
        )
    state = _check_tensors(state, source)
    bad: list[str] = []
    if (
        len(_shape(state, "user_factors.weight")) != 2
        or len(_shape(state, "item_factors.weight")) != 2
    ):
        raise CheckpointError(f"{source}: user_factors.weight and item_factors.weight must be 2-D")
    n_users, n_factors = _shape(state, "user_factors.weight")
    n_items, item_factors = _shape(state, "item_factors.weight")
    if item_factors != n_factors:
        bad.append(
            f"item_factors.weight {_shape(state, 'item_factors.weight')} has "
            f"{item_factors} factors, user_factors.weight {n_factors}"
        )
    mean = state.get("global_mean", torch.zeros(()))
    if mean.numel() != 1:
        bad.append(f"global_mean {tuple(mean.shape)} is not a scalar")
    if kind == "mf":
        has_ub, has_ib = "user_bias.weight" in state, "item_bias.weight" in state
        if has_ub != has_ib:
            bad.append("user_bias.weight and item_bias.weight come together")
        for key, n in (("user_bias.weight", n_users), ("item_bias.weight", n_items)):
            if key in state and state[key].numel() != n:
                bad.append(f"{key} {_shape(state, key)} is not [{n}, 1]")
        if bad:
            raise CheckpointError(
                f"{source}: shapes do not match the post's {cls_name}: " + "; ".join(bad)
            )
        biased = has_ub and has_ib
        model: BaseModel = MatrixFactorization(
            n_users, n_items, n_factors, biased=biased, global_mean=float(mean), sparse=False
        )
        with torch.no_grad():
            model.user_factors.weight.copy_(state["user_factors.weight"])
            model.item_factors.weight.copy_(state["item_factors.weight"])
            if biased:
                model.user_bias.weight.copy_(state["user_bias.weight"].reshape(n_users, 1))
                model.item_bias.weight.copy_(state["item_bias.weight"].reshape(n_items, 1))
        return model.eval()
    hidden = _shape(state, "linear1.weight")[0]
    want = {
        "linear1.weight": (hidden, 2 * n_factors),
        "linear1.bias": (hidden,),
        "linear2.weight": (1, hidden),
        "linear2.bias": (1,),
    }
    for key, shape in want.items():
        if _shape(state, key) != shape:
            bad.append(f"{key} is {list(_shape(state, key))}, expected {list(shape)}")
    if bad:
        raise CheckpointError(
            f"{source}: shapes do not match the post's {cls_name} ({n_factors} factors, "
            f"{hidden} hidden, one output): " + "; ".join(bad)
        )
    model = DenseNet(n_users, n_items, n_factors, hidden, global_mean=float(mean))
    with torch.no_grad():
        for key in want:
            model.get_parameter(key).copy_(state[key])
        model.user_factors.weight.copy_(state["user_factors.weight"])
        model.item_factors.weight.copy_(state["item_factors.weight"])
    return model.eval()


def recognise(module_or_state: nn.Module | Mapping[str, Any]) -> str | None:
    """``"mf"`` or ``"densenet"`` when the names and shapes are the post's class's, else None."""
    state = (
        module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    )
    for kind in ("densenet", "mf"):
        try:
            model_from_state_dict(state, kind)
        except RecsysExportError:
            continue
        return kind
    return None


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A ``torch.save``'d state dict, loaded with ``weights_only=True`` (never a pickle).

    A checkpoint wrapping it (``{"state_dict": ...}`` or ``{"model_state_dict": ...}``) is
    unwrapped; a ``module.`` prefix (``DataParallel``) is removed.

    Raises
    ------
    CheckpointError
        Missing, unreadable or not a state dict, or it holds anything but weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no state dict at {path}")
    obj = load_weights_only(
        path,
        refusal="save model.state_dict(), not the model",
        unreadable="torch file",
    )
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, Tensor) for v in obj.values())
    ):
        raise CheckpointError(
            f"{path} is not a state dict (a mapping of names to tensors); save it with "
            "torch.save(model.state_dict(), path)"
        )
    keys = list(obj)
    if all(str(k).startswith("module.") for k in keys):
        obj = {str(k)[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _conversion_mismatch(
    converted: BaseModel, module: nn.Module, atol: float | None, rtol: float | None
) -> str | None:
    """None when the user's module scores a sample of pairs like our converted model:
    within the float32 error bound of its float64 reference (or ``atol``/``rtol``)."""
    from recsys_export.parity.bounds import reference_for

    gen = torch.Generator().manual_seed(0)
    n = 256
    users = torch.randint(0, converted.n_users, (n,), generator=gen)
    items = torch.randint(0, converted.n_items, (n,), generator=gen)
    users[:2] = torch.tensor([0, converted.n_users - 1])
    items[:2] = torch.tensor([0, converted.n_items - 1])
    try:
        with torch.no_grad(), _eval_mode(module):
            theirs = module(users, items)
        theirs = theirs.reshape(-1).to(torch.float64)
    except Exception as exc:
        return _first_line(exc)
    if theirs.shape != (n,):
        return f"output shape {tuple(theirs.shape)}"
    want, bound = reference_for(converted, atol, rtol).score(users.numpy(), items.numpy())
    diff = np.abs(theirs.numpy() - want)
    if bool((diff <= bound).all()):
        return None
    return f"max abs difference {float(np.nanmax(diff)):.3g} on sample pairs"
