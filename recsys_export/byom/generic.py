"""Bring your own model, generic path: any pairwise ``forward`` as the three entry points."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from recsys_export.errors import (
    ConfigError,
)
from recsys_export.export.formats import export_programs, quiet_exporters
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


def _first_line(exc: BaseException) -> str:
    """``Type: first non-empty line`` of an exception, at most 300 characters."""
    for line in str(exc).splitlines():
        line = " ".join(line.split())
        if line:
            return f"{type(exc).__name__}: {line}"[:300]
    return type(exc).__name__


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
    #: Python-side state TorchScript leaves alone (:meth:`keep_exported`)
    __jit_ignored_attributes__ = ["exported_programs", "_kept"]

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
        """A frozen copy for the exporters (eval mode, no gradients): the one
        :meth:`keep_exported` kept, with its ``exported_programs``, if any."""
        kept = self.__dict__.get("_kept")
        return kept if kept is not None else _frozen_copy(self)

    def keep_exported(self, frozen: nn.Module, programs: dict[str, Any]) -> None:
        """Keep a frozen copy and its ``torch.export`` programs (``export_programs``)
        for :meth:`inference_module`, so the export does not run torch.export again."""
        object.__setattr__(frozen, "exported_programs", programs)
        object.__setattr__(self, "_kept", frozen)  # not a submodule: not in state_dict

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles: this wrapper, with the user's module
        traced (:func:`trace_module`) when Python keeps no source for it (a class
        defined in ``python -`` or ``exec``), so TorchScript can still be written."""
        if source_missing(self.module) is None:
            return self
        clone = copy.copy(self)
        clone._modules = dict(self._modules)
        clone.module = trace_module(self.module, self.n_users, self.n_items)
        return clone

    def pair_bytes(self) -> int:
        """Bytes of activations one pair costs in the module (float32), measured."""
        return measure_pair_bytes(self.module, self.n_users, self.n_items)

    def pair_cost(self) -> int:
        """What one pair costs in MF pairs of a parity budget: the module's dense
        (non-embedding) parameters / :data:`DENSE_PARAMS_PER_PAIR`, at least 1."""
        dense = sum(
            p.numel()
            for m in self.module.modules()
            if not isinstance(m, (nn.Embedding, nn.EmbeddingBag))
            for p in m.parameters(recurse=False)
        )
        return max(1, -(-dense // DENSE_PARAMS_PER_PAIR))

    def call_pairs(self) -> int:
        """Pairs per call of the module in float64 (the parity reference) within
        :data:`REFERENCE_CALL_BYTES`."""
        return max(256, min(1 << 16, REFERENCE_CALL_BYTES // (2 * self.pair_bytes())))


#: A pair of a generic module costs (dense parameters / this) MF pairs of the parity
#: budget: an MF pair at 64 factors is ~64 multiply-adds, a dense layer one per weight.
DENSE_PARAMS_PER_PAIR = 64
#: Memory of one call of the user's module in float64 during parity.
REFERENCE_CALL_BYTES = 64 << 20


@torch.no_grad()
def measure_pair_bytes(module: nn.Module, n_users: int, n_items: int, pairs: int = 64) -> int:
    """Bytes per pair of the module's activations: the outputs of its submodules and its
    own output on ``pairs`` pairs (forward hooks), times 2 for what hooks cannot see
    (functional ops inside ``forward``). At least 64."""
    total = 0

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                total += t.numel() * t.element_size()

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in {*leaves, module}]
    users = torch.arange(pairs, dtype=torch.int64) % n_users
    items = torch.arange(pairs, dtype=torch.int64) % n_items
    try:
        module(users, items)
    except Exception:  # the module's own checks report it later; assume a wide one
        return 1 << 12
    finally:
        for h in handles:
            h.remove()
    return max(64, 2 * total // pairs)


def source_missing(module: nn.Module) -> str | None:
    """Why ``torch.jit.script`` cannot read the source of ``module`` (a class of it
    defined in ``python -``, ``exec`` or a notebook cell Python keeps no file for), or
    None when every class has its source."""
    import inspect

    for m in module.modules():
        cls = type(m)
        if cls.__module__.startswith("torch."):
            continue
        try:  # what TorchScript reads: the source of the methods it compiles
            inspect.getsource(cls.forward)
        except (OSError, TypeError) as exc:
            return f"no source for {cls.__qualname__}.forward ({type(exc).__name__}: {exc})"
    return None


def trace_module(module: nn.Module, n_users: int, n_items: int) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``module`` on the ``(users, items)`` signature: 8 example
    pairs, checked on 3 others (a trace that depends on the batch raises)."""
    from recsys_export.export.formats import quiet_exporters

    def pairs(n: int, offset: int) -> tuple[Tensor, Tensor]:
        idx = torch.arange(offset, offset + n, dtype=torch.int64)
        return idx % n_users, (idx * 7) % n_items

    with quiet_exporters(), torch.no_grad():
        return torch.jit.trace(module, pairs(8, 0), check_inputs=[pairs(3, 5)])


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
            programs = export_programs(frozen, wrapper.n_users, wrapper.n_items)
        except Exception as exc:
            reason = "torch.export: " + _first_line(exc)
            for f in ("pt2", "onnx"):
                if f in fmts:
                    failed[f] = reason
        else:  # the export reuses them: torch.export is most of a generic export's time
            wrapper.keep_exported(frozen, programs)
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
