"""Bring your own model: export PyTorch recommenders trained elsewhere.

:func:`export_model` takes a module (or a state dict) trained outside recsys-export and
writes the same verified bundle as ``recsys-export export`` does for our checkpoints.
Two paths:

``converted``
    A module or state dict with the parameter names and shapes of the post's classes
    (``user_factors``/``item_factors`` embeddings, optionally ``user_bias``/``item_bias``;
    for the dense net also ``linear1`` and ``linear2`` with one output) is converted to our
    :class:`~recsys_export.models.MatrixFactorization` or
    :class:`~recsys_export.models.DenseNet`, so the bundle gets everything ours get:
    fast-path kernels, in-graph top-k, the split DenseNet layer.
``generic``
    Any other ``nn.Module`` whose ``forward(users, items)`` returns one score per pair
    (``[N]`` or ``[N, 1]``). ``score`` is the module, ``score_all`` broadcasts users x
    items through it in bounded blocks (:class:`ModuleRecommender`), ``recommend`` is
    :func:`~recsys_export.models.topk_excluding` on that. The bundle has no fast-path
    kernels; the runtime runs its ONNX entry points.

Either way, parity is checked against the user's own module (not only our copy of it):
the eager reference of :func:`~recsys_export.parity.run_parity` is the user's ``forward``.
The path taken is recorded in the manifest under ``training.config.origin``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys_export.checkpoint import Checkpoint, check_finite_weights, load_weights_only
from recsys_export.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    RecsysExportError,
)
from recsys_export.export import export_bundle, export_programs, parse_formats, quiet_exporters
from recsys_export.ids import IdMap
from recsys_export.models import (
    BaseModel,
    DenseNet,
    MatrixFactorization,
    check_k,
    topk_excluding,
)

#: ``model.kind`` of bundles exported through the generic path.
GENERIC_KIND = "generic"
#: Pairs one ``score_all`` call of a generic bundle feeds through the module (per call
#: of the runtime: ``block_users`` users x ``item_block`` items).
DEFAULT_BLOCK_PAIRS = 1 << 15
#: Item tiles of a generic ``score_all``: at least this many items per tile, at most
#: :data:`MAX_ITEM_TILES` tiles (each tile is a copy of the module in the exported graph).
MIN_ITEM_BLOCK = 8192
MAX_ITEM_TILES = 64
PATHS = ("auto", "converted", "generic")

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


# --------------------------------------------------------------------------- the post's classes


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


# --------------------------------------------------------------------------- generic path


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False


class ModuleRecommender(nn.Module):
    """The three entry points around a module whose ``forward(users, items)`` scores pairs.

    ``score_all`` feeds ``users x items`` through the module in item tiles of
    ``item_block`` (a Python loop over static sizes: unrolled by ``torch.export``, a loop
    in TorchScript) and, eagerly and in TorchScript, in blocks of ``block_users`` users, so
    at most ``block_users * item_block`` pairs go through the module at once (``score``
    too is cut into ``block_pairs`` pairs, eagerly and in TorchScript). Exported
    graphs take whatever batch they are given; the runtime sends ``block_users`` users per
    call (``model.hyperparameters.block_users`` in the manifest).

    Parameters
    ----------
    module : nn.Module
        The user's module (registered as ``self.module``; parameters are shared).
    n_users, n_items : int
        Sizes of the id spaces the module accepts.
    block_pairs : int
        Pairs per block of ``score_all``.
    """

    kind = GENERIC_KIND

    def __init__(
        self,
        module: nn.Module,
        n_users: int,
        n_items: int,
        *,
        block_pairs: int = DEFAULT_BLOCK_PAIRS,
    ) -> None:
        super().__init__()
        for name, value in (
            ("n_users", n_users),
            ("n_items", n_items),
            ("block_pairs", block_pairs),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.module = module
        self.n_users = n_users
        self.n_items = n_items
        self.block_pairs = block_pairs
        self.item_block = min(n_items, max(MIN_ITEM_BLOCK, -(-n_items // MAX_ITEM_TILES)))
        self.block_users = max(1, min(1024, block_pairs // self.item_block))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Pairwise scores ``float32[N]``: the module's output, flattened."""
        return self.score(users, items)

    def _pairs(self, users: Tensor, items: Tensor) -> Tensor:
        return self.module(users, items).reshape(-1).to(torch.float32)

    @torch.jit.export
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """The module on pairs; eagerly and in TorchScript ``block_pairs`` at a time."""
        if not torch.jit.is_scripting():
            if _exporting():
                return self._pairs(users, items)
        n = users.shape[0]
        if n <= self.block_pairs:
            return self._pairs(users, items)
        parts: list[Tensor] = []
        for start in range(0, n, self.block_pairs):
            stop = start + self.block_pairs
            parts.append(self._pairs(users[start:stop], items[start:stop]))
        return torch.cat(parts)

    def _item_tiles(self, users: Tensor) -> Tensor:
        b = users.shape[0]
        parts: list[Tensor] = []
        for t0 in range(0, self.n_items, self.item_block):
            t1 = min(t0 + self.item_block, self.n_items)
            items = torch.arange(t0, t1, dtype=torch.int64, device=users.device)
            u = users.unsqueeze(1).expand(b, t1 - t0).reshape(-1)
            i = items.unsqueeze(0).expand(b, t1 - t0).reshape(-1)
            parts.append(self._pairs(u, i).reshape(b, t1 - t0))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    @torch.jit.export
    def score_all(self, users: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if _exporting():  # one graph call per batch: the runtime sizes the batch
                return self._item_tiles(users)
        blocks: list[Tensor] = []
        for start in range(0, users.shape[0], self.block_users):
            blocks.append(self._item_tiles(users[start : start + self.block_users]))
        if len(blocks) == 0:
            return torch.zeros((0, self.n_items), dtype=torch.float32)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, 0)

    @torch.jit.export
    def recommend(
        self, users: Tensor, k: int, exclude_rows: Tensor, exclude_items: Tensor
    ) -> tuple[Tensor, Tensor]:
        if torch.jit.is_scripting():  # TorchScript callers get a clear message
            if k < 1 or k > self.n_items:
                raise ValueError(
                    "k must be between 1 and "
                    + str(self.n_items)
                    + " (the number of items), got "
                    + str(k)
                )
        else:
            if not _exporting():
                check_k(k, self.n_items)
        return topk_excluding(self.score_all(users), k, exclude_rows, exclude_items)

    def hyperparameters(self) -> dict[str, Any]:
        """What the manifest records (the module itself is in the graphs)."""
        cls = type(self.module)
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "module": f"{cls.__module__}.{cls.__qualname__}",
            "block_pairs": self.block_pairs,
            "item_block": self.item_block,
            "block_users": self.block_users,
        }

    def inference_module(self) -> nn.Module:
        """A frozen copy for the exporters (eval mode, no gradients)."""
        return _frozen_copy(self)


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode without gradients (the exporters' input).

    A module that cannot be copied is used as it is (in eval mode; its parameters'
    ``requires_grad`` flags are left alone, the exporters do not need them off).
    """
    try:
        frozen = copy.deepcopy(module)
    except Exception:
        return module.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen.eval()


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """The module in eval mode for the duration (each submodule's flag restored after)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


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


def _against_user(model: BaseModel, module: nn.Module) -> BaseModel:
    cls = _MFAgainstUser if isinstance(model, MatrixFactorization) else _DenseNetAgainstUser
    twin = cls(**model.hyperparameters())
    twin.load_state_dict(model.state_dict())
    twin.attach(module)
    return twin.eval()


def _sizes_from_embeddings(module: nn.Module) -> tuple[int | None, int | None]:
    """(n_users, n_items) from embeddings named like users/items, if unambiguous."""
    found: dict[str, set[int]] = {"user": set(), "item": set()}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Embedding):
            low = name.lower()
            for role in found:
                if role in low:
                    found[role].add(sub.num_embeddings)
    pick = [next(iter(v)) if len(v) == 1 else None for v in found.values()]
    return pick[0], pick[1]


# --------------------------------------------------------------------------- ids and seen


def _id_column(df: Any, role: str, given: str | None) -> str:
    from recsys_export.data.columns import KNOWN_COLUMNS as _KNOWN
    from recsys_export.data.columns import norm_name as _norm_name

    if given is not None:
        if given not in df.columns:
            raise DataError(f"ratings have no column {given!r} (columns: {list(df.columns)})")
        return given
    hits = [c for c in df.columns if _norm_name(c) in _KNOWN[role]]
    if len(hits) != 1:
        raise DataError(
            f"cannot tell which column of the ratings holds {role} ids (columns: "
            f"{list(df.columns)}); pass {role}_col="
        )
    return str(hits[0])


@dataclass
class IdsAndSeen:
    """Raw ids in index order and seen (user index, item index) pairs for a bundle."""

    user_map: IdMap
    item_map: IdMap
    seen_users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    seen_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source: str = "indices"


def _id_map(ids: Any, n: int, role: str, source: str = "") -> IdMap:
    if ids is None:
        return IdMap(np.arange(n, dtype=np.int64), role)
    try:
        m = IdMap(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids), role)
    except ValueError as exc:
        raise DataError(f"{role}_ids: {exc}") from None
    if len(m) != n:
        what = (
            f"{source} has {len(m)} distinct {role}s" if source else f"{role}_ids has {len(m)} ids"
        )
        raise DataError(
            f"{what}, the model has {n} {role}s; the raw ids must number the model's "
            f"{role}s in index order"
        )
    return m


def resolve_ids(
    n_users: int,
    n_items: int,
    *,
    user_ids: Any = None,
    item_ids: Any = None,
    ratings: Any = None,
    seen: Any = None,
    user_col: str | None = None,
    item_col: str | None = None,
) -> IdsAndSeen:
    """Id maps and seen pairs from the :func:`export_model` arguments.

    ``ratings`` (a pandas DataFrame, or a :class:`~recsys_export.data.Ratings`) gives the
    raw ids (sorted unique values of its id columns, unless ``user_ids``/``item_ids`` are
    given) and the seen pairs (unless ``seen`` is given). ``seen`` is a mapping
    ``{raw user: [raw items]}`` or a pair ``(raw users, raw items)`` of equal length.
    """
    from recsys_export.data import Ratings

    src = "indices"
    ru = ri = None
    if isinstance(ratings, Ratings):
        ru = ratings.user_map.raw_ids[ratings.users]
        ri = ratings.item_map.raw_ids[ratings.items]
        src = ratings.source
    elif ratings is not None:
        if not hasattr(ratings, "columns"):
            raise ConfigError("ratings must be a pandas DataFrame (or a Ratings object)")
        ucol = _id_column(ratings, "user", user_col)
        icol = _id_column(ratings, "item", item_col)
        ru, ri = ratings[ucol].to_numpy(), ratings[icol].to_numpy()
        src = "ratings DataFrame"
    from_ratings = {"user": "", "item": ""}
    if ru is not None:
        if user_ids is None:
            user_ids, from_ratings["user"] = IdMap.build(ru, "user")[0].raw_ids, src
        if item_ids is None:
            item_ids, from_ratings["item"] = IdMap.build(ri, "item")[0].raw_ids, src
    umap = _id_map(user_ids, n_users, "user", from_ratings["user"])
    imap = _id_map(item_ids, n_items, "item", from_ratings["item"])
    if seen is not None:
        if isinstance(seen, Mapping):
            pairs = [(u, i) for u, items in seen.items() for i in items]
            ru = np.asarray([p[0] for p in pairs])
            ri = np.asarray([p[1] for p in pairs])
        else:
            try:
                ru, ri = (np.asarray(a) for a in seen)
            except (TypeError, ValueError):
                raise ConfigError("seen must be {user: [items]} or (users, items)") from None
            if ru.shape != ri.shape:
                raise ConfigError("seen users and items differ in length")
    out = IdsAndSeen(umap, imap, source=src)
    if ru is not None and len(ru):
        out.seen_users = umap.to_index(ru)
        out.seen_items = imap.to_index(ri)
    return out


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What :func:`export_model` did.

    Attributes
    ----------
    path : str
        ``"converted"`` (to our ``mf``/``densenet``) or ``"generic"``.
    kind : str
        ``model.kind`` in the manifest: ``mf``, ``densenet`` or ``generic``.
    bundle : Path
        The bundle directory.
    manifest : dict
        The manifest as written.
    failed : dict
        Formats that could not be exported -> the exporter's reason (with ``keep_partial``).
    reason : str
        Why this path was taken.
    """

    path: str
    kind: str
    bundle: Path
    manifest: dict[str, Any]
    failed: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def parity(self) -> dict[str, Any] | None:
        return self.manifest.get("parity")


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = " ".join(line.split())
        if line:
            return f"{type(exc).__name__}: {line}"[:300]
    return type(exc).__name__


def _probe_formats(wrapper: ModuleRecommender, fmts: list[str]) -> dict[str, str]:
    """Formats the module cannot be exported to -> the exporter's reason (cheap steps)."""
    failed: dict[str, str] = {}
    frozen = _frozen_copy(wrapper)
    if "torchscript" in fmts:
        try:
            with quiet_exporters():
                torch.jit.script(frozen)
        except Exception as exc:
            failed["torchscript"] = "torch.jit.script: " + _first_line(exc)
    if "pt2" in fmts or "onnx" in fmts:
        try:
            export_programs(frozen, wrapper.n_users, wrapper.n_items)
        except Exception as exc:
            reason = "torch.export: " + _first_line(exc)
            for f in ("pt2", "onnx"):
                if f in fmts:
                    failed[f] = reason
    return failed


def _check_scores(wrapper: ModuleRecommender) -> None:
    """The module takes int64 users and items and returns one float per pair."""
    n = 3
    users = torch.tensor([0, wrapper.n_users - 1, 0], dtype=torch.int64)
    items = torch.tensor([0, wrapper.n_items - 1, wrapper.n_items - 1], dtype=torch.int64)
    name = type(wrapper.module).__name__
    try:
        with torch.no_grad():
            out = wrapper.module(users, items)
    except Exception as exc:
        raise ConfigError(
            f"{name}(users, items) failed on int64 indices ({_first_line(exc)}); the generic "
            "path needs forward(users int64[N], items int64[N]) -> scores[N]"
        ) from None
    if not isinstance(out, Tensor) or tuple(out.shape) not in ((n,), (n, 1)):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"{name}(users, items) returned {shape} for {n} pairs; the generic path needs one "
            "score per pair ([N] or [N, 1])"
        )
    if not out.is_floating_point():
        raise ConfigError(f"{name}(users, items) returned {out.dtype} scores, not floats")


def export_model(
    module: nn.Module | Mapping[str, Any],
    out: str | Path,
    *,
    kind: str | None = None,
    path: str = "auto",
    n_users: int | None = None,
    n_items: int | None = None,
    user_ids: Any = None,
    item_ids: Any = None,
    ratings: Any = None,
    seen: Any = None,
    user_col: str | None = None,
    item_col: str | None = None,
    formats: str | Sequence[str] | None = None,
    verify: bool = True,
    keep_partial: bool = False,
    overwrite: bool = False,
    external_data: bool | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
    progress: bool = False,
) -> ExportResult:
    """Export a recommender trained elsewhere to a verified bundle.

    Parameters
    ----------
    module : nn.Module or state dict
        A module whose ``forward(users, items)`` returns one score per pair, or a state
        dict with the post's names (then ``kind`` says which class; it is recognised from
        the shapes when omitted).
    out : path
        Bundle directory to create (atomically).
    kind : {"mf", "densenet"}, optional
        Force the post's class (a module that does not match raises).
    path : {"auto", "converted", "generic"}
        ``auto`` converts the post's classes and sends anything else through the generic
        path; a module that has the post's names but scores differently from its converted
        copy (a sigmoid on top, another forward) is exported generically too.
    n_users, n_items : int, optional
        Sizes for the generic path; default: the id lists, or embeddings whose names
        contain ``user`` / ``item``.
    user_ids, item_ids : sequence, optional
        Raw ids in index order (``user_ids[j]`` is the id of index ``j``); default
        ``0..n-1``.
    ratings : pandas.DataFrame, optional
        Rows with user and item id columns (found by name, or ``user_col``/``item_col``):
        raw ids are their sorted unique values (unless given) and the rows are the seen
        items.
    seen : mapping or (users, items), optional
        Seen items in raw ids, removed by ``recommend`` (default: ``ratings``' rows).
    formats : str or sequence, optional
        Subset of ``onnx``, ``torchscript``, ``pt2`` (default: all).
    verify : bool
        Check parity of every format (and the runtime) against the user's module.
    keep_partial : bool
        When a format cannot be exported, write the others (listed in
        :attr:`ExportResult.failed`) instead of failing.
    block_pairs : int
        Generic path: pairs per ``score_all`` block (bounds its memory).

    Returns
    -------
    ExportResult
        Path taken, bundle, manifest (its ``parity`` summary), failed formats.

    Raises
    ------
    ExportError
        A format cannot be exported (one line: the format and the exporter's reason).
    ParityError
        An export does not reproduce the user's module within ``atol``/``rtol``.
    CheckpointError, ConfigError, DataError
        A state dict that is not the post's class, bad sizes, ids or options.
    """
    if path not in PATHS:
        raise ConfigError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    fmts = parse_formats(formats)
    from recsys_export.parity import check_tolerances

    check_tolerances(atol, rtol)
    opts: dict[str, Any] = {  # what the export steps below need, by name
        "n_users": n_users,
        "n_items": n_items,
        "user_ids": user_ids,
        "item_ids": item_ids,
        "ratings": ratings,
        "seen": seen,
        "user_col": user_col,
        "item_col": item_col,
        "verify": verify,
        "keep_partial": keep_partial,
        "overwrite": overwrite,
        "external_data": external_data,
        "atol": atol,
        "rtol": rtol,
        "block_pairs": block_pairs,
        "progress": progress,
    }
    if not isinstance(module, nn.Module):
        if not isinstance(module, Mapping):
            raise ConfigError(f"expected an nn.Module or a state dict, got {type(module).__name__}")
        if path == "generic":
            raise ConfigError("a state dict has no forward: the generic path needs the module")
        kind = kind or recognise(module)
        if kind is None:
            model_from_state_dict(module, "mf")  # raises, listing what does not match
        converted = model_from_state_dict(module, kind or "mf")
        return _export_converted(
            converted, None, out, "state dict with the post's names", fmts, opts
        )
    name = type(module).__name__
    reason = ""
    if path != "generic":
        found = kind or recognise(module)
        if found is None and (path == "converted" or kind is not None):
            model_from_state_dict(module.state_dict(), kind or "mf", source=name)  # raises
        if found is not None:
            converted = model_from_state_dict(module.state_dict(), found, source=name)
            mismatch = _conversion_mismatch(converted, module, atol, rtol)
            if mismatch is None:
                return _export_converted(
                    converted,
                    module,
                    out,
                    f"{name} has the post's {found} names and scores",
                    fmts,
                    opts,
                )
            if path == "converted" or kind is not None:
                raise ConfigError(
                    f"{name} has the post's {found} parameter names but scores differently "
                    f"({mismatch}); use path='generic'"
                )
            reason = f"{name} has the post's {found} names but scores differently ({mismatch})"
    return _export_generic(
        module, out, reason or f"{name} is not one of the post's classes", fmts, opts
    )


def _conversion_mismatch(
    converted: BaseModel, module: nn.Module, atol: float, rtol: float
) -> str | None:
    """None when our converted model scores a sample of pairs like the user's module."""
    gen = torch.Generator().manual_seed(0)
    n = 256
    users = torch.randint(0, converted.n_users, (n,), generator=gen)
    items = torch.randint(0, converted.n_items, (n,), generator=gen)
    users[:2] = torch.tensor([0, converted.n_users - 1])
    items[:2] = torch.tensor([0, converted.n_items - 1])
    try:
        with torch.no_grad(), _eval_mode(module):
            theirs = module(users, items)
            ours = converted(users, items)
        theirs = theirs.reshape(-1).to(torch.float32)
    except Exception as exc:
        return _first_line(exc)
    if theirs.shape != ours.shape:
        return f"output shape {tuple(theirs.shape)}"
    diff = (theirs - ours).abs()
    if bool((diff <= atol + rtol * ours.abs()).all()):
        return None
    return f"max abs difference {float(diff.max()):.3g} on sample pairs"


def _ids(opts: dict[str, Any], n_users: int, n_items: int) -> IdsAndSeen:
    return resolve_ids(
        n_users,
        n_items,
        user_ids=opts["user_ids"],
        item_ids=opts["item_ids"],
        ratings=opts["ratings"],
        seen=opts["seen"],
        user_col=opts["user_col"],
        item_col=opts["item_col"],
    )


def _checkpoint(model: Any, ids: IdsAndSeen, origin: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        model=model,
        user_map=ids.user_map,
        item_map=ids.item_map,
        seen_users=ids.seen_users,
        seen_items=ids.seen_items,
        config={"origin": origin},
        data={"source": ids.source, "seen_pairs": int(ids.seen_users.size)},
    )


def _export(ckpt: Checkpoint, out: str | Path, fmts: list[str], opts: dict[str, Any]) -> dict:
    return export_bundle(
        ckpt,
        out,
        formats=fmts,
        overwrite=opts["overwrite"],
        external_data=opts["external_data"],
        verify=opts["verify"],
        atol=opts["atol"],
        rtol=opts["rtol"],
        progress=opts["progress"],
    )


def _export_converted(
    converted: BaseModel,
    module: nn.Module | None,
    out: str | Path,
    reason: str,
    fmts: list[str],
    opts: dict[str, Any],
) -> ExportResult:
    ids = _ids(opts, converted.n_users, converted.n_items)
    model = converted if module is None else _against_user(converted, module)
    origin = {
        "api": "export_model",
        "path": "converted",
        "module": None if module is None else _qualname(module),
        "reference": "state dict" if module is None else "the user's module",
        "reason": reason,
    }
    ctx = contextlib.nullcontext() if module is None else _eval_mode(module)
    with ctx:
        manifest = _export(_checkpoint(model, ids, origin), out, fmts, opts)
    return ExportResult("converted", converted.kind, Path(out), manifest, reason=reason)


def _qualname(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _export_generic(
    module: nn.Module, out: str | Path, reason: str, fmts: list[str], opts: dict[str, Any]
) -> ExportResult:
    guess_u, guess_i = _sizes_from_embeddings(module)
    n_users = opts["n_users"] or _count(opts["user_ids"]) or guess_u
    n_items = opts["n_items"] or _count(opts["item_ids"]) or guess_i
    if n_users is None or n_items is None:
        raise ConfigError(
            f"cannot tell how many users and items {type(module).__name__} scores; pass "
            "n_users= and n_items= (or user_ids= and item_ids=)"
        )
    wrapper = ModuleRecommender(module, int(n_users), int(n_items), block_pairs=opts["block_pairs"])
    ids = _ids(opts, wrapper.n_users, wrapper.n_items)
    with _eval_mode(module):
        _check_scores(wrapper)
        failed = _probe_formats(wrapper, fmts)
        ok = [f for f in fmts if f not in failed]
        if failed and (not opts["keep_partial"] or not ok):
            raise ExportError(_failure_line(module, failed))
        origin = {
            "api": "export_model",
            "path": "generic",
            "module": _qualname(module),
            "reference": "the user's module",
            "reason": reason,
            "failed_formats": failed,
        }
        try:
            manifest = _export(_checkpoint(wrapper, ids, origin), out, ok, opts)
        except RecsysExportError:
            raise
        except Exception as exc:  # the ONNX conversion is the step not probed above
            failed["onnx" if "onnx" in ok else ok[-1]] = "torch.onnx: " + _first_line(exc)
            ok = [f for f in ok if f not in failed]
            if not opts["keep_partial"] or not ok:
                raise ExportError(_failure_line(module, failed)) from None
            origin["failed_formats"] = failed
            manifest = _export(_checkpoint(wrapper, ids, origin), out, ok, opts)
    return ExportResult(GENERIC_KIND, GENERIC_KIND, Path(out), manifest, failed, reason)


def _count(ids: Any) -> int | None:
    return None if ids is None else len(ids)


def _failure_line(module: nn.Module, failed: dict[str, str]) -> str:
    by_reason: dict[str, list[str]] = {}
    for fmt, why in failed.items():
        by_reason.setdefault(why, []).append(fmt)
    parts = [f"{', '.join(fmts)}: {why}" for why, fmts in by_reason.items()]
    return (
        f"cannot export {type(module).__name__} to {', '.join(failed)} ("
        + "; ".join(parts)
        + "); keep the other formats with keep_partial=True (CLI: --keep-partial)"
    )


def verify_module(
    module: nn.Module, bundle: str | Path, *, atol: float = 1e-5, rtol: float = 1e-5
) -> Any:
    """Parity of a written generic bundle against the user's module (nothing recorded).

    Returns
    -------
    recsys_export.parity.ParityReport
    """
    from recsys_export.bundle import Bundle
    from recsys_export.parity import (
        CHECKED_BACKENDS,
        EagerBackend,
        bundle_seen,
        load_backends,
        run_parity,
    )

    b = Bundle.load(bundle)
    m = b.manifest["model"]
    wrapper = ModuleRecommender(module, int(m["n_users"]), int(m["n_items"]))
    backends = load_backends(b.root, b.manifest, CHECKED_BACKENDS)
    with _eval_mode(module):
        return run_parity(
            EagerBackend(wrapper),  # type: ignore[arg-type]
            backends,
            wrapper.n_users,
            wrapper.n_items,
            seen=bundle_seen(b.root, b.manifest),
            atol=atol,
            rtol=rtol,
        )


__all__ = [
    "GENERIC_KIND",
    "ExportResult",
    "ModuleRecommender",
    "export_model",
    "load_state_dict_file",
    "model_from_state_dict",
    "recognise",
    "resolve_ids",
    "verify_module",
]


# --------------------------------------------------------------------------- CLI helpers


def load_class(spec: str) -> type[nn.Module]:
    """``package.module:Class`` or ``path/to/file.py:Class`` -> the class (its code runs).

    Raises
    ------
    ConfigError
        A malformed spec, a module or file that cannot be imported, or no such class.
    """
    import importlib
    import importlib.util

    target, sep, cls_name = spec.rpartition(":")
    if not sep or not target or not cls_name.isidentifier():
        raise ConfigError(
            f"--model {spec!r}: expected mf, densenet, package.module:Class or file.py:Class"
        )
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise ConfigError(f"--model {spec!r}: no file {file}")
            mod_spec = importlib.util.spec_from_file_location(f"_byom_{file.stem}", file)
            assert mod_spec is not None and mod_spec.loader is not None
            mod = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(target)
    except RecsysExportError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"--model {spec!r}: cannot import {target} ({_first_line(exc)})"
        ) from None
    cls = getattr(mod, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"--model {spec!r}: {target} has no nn.Module subclass {cls_name}")
    return cls


def module_from_files(
    state_path: str | Path, spec: str, model_args: Mapping[str, Any] | None = None
) -> nn.Module | dict[str, Tensor]:
    """What ``recsys-export export STATE_DICT --model SPEC`` exports.

    ``mf``/``densenet``: the state dict itself (sizes read from the tensors). Otherwise
    ``SPEC`` names a class, built with ``model_args`` and loaded with the state dict
    (strictly: a message lists missing and unexpected keys).
    """
    state = load_state_dict_file(state_path)
    if spec in ("mf", "densenet"):
        return state
    cls = load_class(spec)
    try:
        module = cls(**dict(model_args or {}))
    except Exception as exc:
        raise ConfigError(
            f"cannot build {cls.__name__}(**model_args): {_first_line(exc)}"
        ) from None
    expected = module.state_dict()
    problem = _key_problems(state, list(expected), [])
    if problem:
        raise CheckpointError(f"{state_path} does not match {cls.__name__}: {problem}")
    shapes = [
        f"{k} is {list(v.shape)}, {cls.__name__} expects {list(expected[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if shapes:
        raise CheckpointError(f"{state_path} does not match {cls.__name__}: " + "; ".join(shapes))
    module.load_state_dict(state)
    return module.eval()


def ids_from_file(path: str | Path, **columns: Any) -> Any:
    """The ratings file of ``--ids-from`` (:func:`recsys_export.data.read_ratings`)."""
    from recsys_export.data import read_ratings

    return read_ratings(path, **{k: v for k, v in columns.items() if v is not None})
