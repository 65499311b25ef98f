"""Bring your own model, converted path: the post's classes as our models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys_export.byom.generic import ModuleRecommender, eval_mode, first_line
from recsys_export.core.defaults import MODEL_KINDS
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
from recsys_export.torch_runtime.io import check_finite_weights, load_weights_only

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


def key_problems(
    state: Mapping[str, Any], required: Sequence[str], optional: Sequence[str]
) -> str | None:
    """What keys of ``state`` differ from ``required`` (all of them) and ``optional``:
    ``"missing a, b; unexpected c"``, or None when they match."""
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
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; choose mf or densenet")
    required, optional = (
        (_MF_REQUIRED, _MF_OPTIONAL) if kind == "mf" else (_DN_REQUIRED, _DN_OPTIONAL)
    )
    cls_name = "MatrixFactorization" if kind == "mf" else "DenseNet"
    problem = key_problems(state, required, optional)
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
    obj = load_weights_only(
        path,
        refusal="save model.state_dict(), not the model",
        unreadable="torch file",
        missing=f"no state dict at {path}",
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


def conversion_mismatch(
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
        with torch.no_grad(), eval_mode(module):
            theirs = module(users, items)
        theirs = theirs.reshape(-1).to(torch.float64)
    except Exception as exc:
        return first_line(exc)
    if theirs.shape != (n,):
        return f"output shape {tuple(theirs.shape)}"
    want, bound = reference_for(converted, atol, rtol).score(users.numpy(), items.numpy())
    diff = np.abs(theirs.numpy() - want)
    if bool((diff <= bound).all()):
        return None
    return f"max abs difference {float(np.nanmax(diff)):.3g} on sample pairs"


class _UserReference:
    """Mixin: a converted model whose eager entry points run the user's module.

    Our converted copy provides the weights (exported, with every fast path); the parity
    reference, i.e. what ``forward``/``score_all``/``recommend`` compute eagerly, is the
    user's module, scored pair by pair through :class:`ModuleRecommender`.
    """

    n_users: int
    n_items: int

    def attach(self, module: nn.Module) -> None:
        # not a registered submodule: the state dict stays ours
        object.__setattr__(self, "_user", ModuleRecommender(module, self.n_users, self.n_items))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self._user.score(users, items)

    def score_all(self, users: Tensor) -> Tensor:
        return self._user.score_all(users)


class _MFAgainstUser(_UserReference, MatrixFactorization):
    pass


class _DenseNetAgainstUser(_UserReference, DenseNet):
    pass


def against_user(model: BaseModel, module: nn.Module) -> BaseModel:
    """A copy of the converted ``model`` whose eager entry points run the user's
    ``module`` (:class:`_UserReference`): the weights exported, the module the reference."""
    cls = _MFAgainstUser if isinstance(model, MatrixFactorization) else _DenseNetAgainstUser
    twin = cls(**model.hyperparameters())
    twin.load_state_dict(model.state_dict())
    twin.attach(module)
    return twin.eval()
