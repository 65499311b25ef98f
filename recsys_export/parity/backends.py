"""Parity backends: the eager reference and each format on the same index inputs.

The torch backends (eager, TorchScript, ``.pt2``, the torch engine) take a ``device``:
None keeps the CPU path as it always was; a ``torch.device`` (``verify --device``) puts
the module and every input on it and brings the outputs back to the host. The
onnxruntime backends (ONNX graphs, the runtime) take ``providers`` (default
``["CPUExecutionProvider"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export.export.formats import quiet_exporters
from recsys_export.ids import runs_to_coo
from recsys_export.manifest import FORMATS
from recsys_export.models import BaseModel, DenseNet, check_k, topk_excluding
from recsys_export.plan import (
    PARITY_WORKERS,
)
from recsys_export.torch_engine import load_exported_module

#: What export and ``verify`` check by default: every format, and the torch-free runtime.
CHECKED_BACKENDS = (*FORMATS, "runtime")


class Backend:
    """The three entry points on dense indices, returning numpy arrays."""

    name = ""
    #: Whether ``score_all`` / ``recommend`` bound their own memory (they chunk and tile
    #: internally), so a parity pass may hand them a whole block of users per call.
    chunks_itself = False

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_all(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def recommend(
        self, users: np.ndarray, k: int, rows: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def _t(a: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return t if device is None else t.to(device)


def _np(t: torch.Tensor) -> np.ndarray:
    """A result on the host, as numpy (a no-op copy-wise for CPU tensors)."""
    return t.cpu().numpy()


#: Bytes of one ``[users, items, hidden]`` tile of the eager DenseNet reference.
EAGER_TILE_BYTES = 4 << 20


class EagerBackend(Backend):
    """The trained eager model in float32 (row ``eager``: the bound must hold for the
    model's own arithmetic).

    DenseNet's ``score_all`` is the model's own computation (split first layer, ReLU,
    second layer) done in tiles of users x items, so its ``[B, n_items, hidden]``
    activations never exist at once: memory stays at :data:`EAGER_TILE_BYTES` and the
    tile stays in cache. ``recommend`` is :func:`~recsys_export.models.topk_excluding`
    on ``score_all``, whose last block is kept: a parity block asks for ``score_all``
    and then ``recommend`` with several ``k`` on the same users.

    Parameters
    ----------
    model : BaseModel
        The eager model (moved to ``device`` when one is given).
    device : torch.device, optional
        Where the model runs (default: where it is, the CPU).
    """

    name = "eager"
    chunks_itself = True

    def __init__(self, model: BaseModel, device: torch.device | None = None) -> None:
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.device = device
        self._item_half: torch.Tensor | None = None
        self._last: tuple[bytes, torch.Tensor] | None = None

    @torch.no_grad()
    def score(self, users, items):
        return _np(self.model(_t(users, self.device), _t(items, self.device)))

    @torch.no_grad()
    def score_all(self, users):
        return _np(self._score_all(users))

    def _score_all(self, users: np.ndarray) -> torch.Tensor:
        key = np.ascontiguousarray(users, dtype=np.int64).tobytes()
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._last = None  # the previous block's scores are not kept beside the new ones
        out = self._compute_all(users)
        self._last = (key, out)
        return out

    def _compute_all(self, users: np.ndarray) -> torch.Tensor:
        m = self.model
        if not isinstance(m, DenseNet):
            return m.score_all(_t(users, self.device))
        k, n_items, hidden = m.n_factors, m.n_items, m.hidden
        w = m.linear1.weight
        if self._item_half is None:  # C = Q Wi^T + b1, as in DenseNet.score_all
            self._item_half = m.item_factors.weight @ w[:, k:].t() + m.linear1.bias
        c = self._item_half
        a = m.user_factors(_t(users, self.device)) @ w[:, :k].t()  # [B, H]
        w2, tail = m.linear2.weight.t(), m.linear2.bias
        out = torch.empty((len(users), n_items), dtype=torch.float32, device=a.device)
        width = min(n_items, max(64, EAGER_TILE_BYTES // (4 * hidden * 8)))
        rows = max(1, EAGER_TILE_BYTES // (4 * hidden * width))
        for b0 in range(0, len(users), rows):
            ab = a[b0 : b0 + rows].unsqueeze(1)
            for t0 in range(0, n_items, width):
                h = torch.relu(ab + c[t0 : t0 + width].unsqueeze(0))  # [b, T, H]
                y = (h @ w2).squeeze(2) + tail + m.global_mean
                out[b0 : b0 + rows, t0 : t0 + width] = y
        return out

    @torch.no_grad()
    def recommend(self, users, k, rows, items):
        d = self.device
        check_k(int(k), self.model.n_items)
        s, i = topk_excluding(self._score_all(users), int(k), _t(rows, d), _t(items, d))
        return _np(s), _np(i)


class TorchScriptBackend(Backend):
    """``torch.jit.load`` of the bundle's scripted module (on ``device``, default CPU)."""

    name = "torchscript"

    def __init__(self, path: Path, device: torch.device | None = None) -> None:
        self.device = device
        with quiet_exporters():
            self.module = torch.jit.load(str(path), map_location=device or "cpu")

    @torch.no_grad()
    def score(self, users, items):
        return _np(self.module.score(_t(users, self.device), _t(items, self.device)))

    @torch.no_grad()
    def score_all(self, users):
        return _np(self.module.score_all(_t(users, self.device)))

    @torch.no_grad()
    def recommend(self, users, k, rows, items):
        d = self.device
        s, i = self.module.recommend(_t(users, d), int(k), _t(rows, d), _t(items, d))
        return _np(s), _np(i)


class Pt2Backend(Backend):
    """``torch.export.load`` of the bundle's ExportedPrograms, one per entry point (on
    ``device``, default CPU)."""

    name = "pt2"

    def __init__(self, paths: dict[str, Path], device: torch.device | None = None) -> None:
        self.device = device
        with quiet_exporters():
            self.modules = {e: load_exported_module(p, device) for e, p in paths.items()}

    @torch.no_grad()
    def score(self, users, items):
        return _np(self.modules["score"](_t(users, self.device), _t(items, self.device)))

    @torch.no_grad()
    def score_all(self, users):
        return _np(self.modules["score_all"](_t(users, self.device)))

    @torch.no_grad()
    def recommend(self, users, k, rows, items):
        d = self.device
        k_t = torch.tensor(int(k), device=d)
        s, i = self.modules["recommend"](_t(users, d), k_t, _t(rows, d), _t(items, d))
        return _np(s), _np(i)


class OnnxBackend(Backend):
    """onnxruntime sessions on the bundle's ONNX graphs (indices validated by callers),
    with ``providers`` (validated by callers; default ``["CPUExecutionProvider"]``)."""

    name = "onnx"

    def __init__(self, paths: dict[str, Path], providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        from recsys_export.runtime.engines import DEFAULT_PROVIDERS

        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        if PARITY_WORKERS > 1:  # the parity pass runs backends side by side
            opts.intra_op_num_threads = 1
        opts.enable_cpu_mem_arena = False  # parity's calls vary in size: free, don't pool
        self.sessions = {
            e: ort.InferenceSession(str(p), opts, providers=providers or list(DEFAULT_PROVIDERS))
            for e, p in paths.items()
        }

    def score(self, users, items):
        return self.sessions["score"].run(None, {"users": users, "items": items})[0]

    def score_all(self, users):
        return self.sessions["score_all"].run(None, {"users": users})[0]

    def recommend(self, users, k, rows, items):
        feeds = {
            "users": users,
            "k": np.array(k, dtype=np.int64),
            "exclude_rows": rows,
            "exclude_items": items,
        }
        s, i = self.sessions["recommend"].run(None, feeds)
        return s, i


class NotApplicable(Exception):
    """A backend cannot express this case (e.g. arbitrary exclusions); the case is skipped."""


class RuntimeBackend(Backend):
    """The torch-free :class:`~recsys_export.runtime.Recommender` (with its fast paths).

    ``score`` and ``score_all`` take any indices. ``recommend`` runs the runtime's own
    ``exclude_seen`` path, so it applies where the exclusions are exactly the users' seen
    items (the full-matrix pass); other cases raise :class:`NotApplicable`.
    """

    name = "runtime"
    chunks_itself = True

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        from recsys_export.runtime import Recommender

        # checksums: verified by the caller
        self.rec = Recommender.load(path, verify=False, providers=providers)

    def score(self, users, items):
        return self.rec.score(users, items, by_index=True)

    def score_all(self, users):
        return self.rec.score_all(users, by_index=True)

    def recommend(self, users, k, rows, items):
        if len(np.unique(users)) != len(users):
            raise NotApplicable("repeated users")
        want_rows, want_items = _seen_for(users, *self.rec.seen_csr())
        got = np.lexsort((items, rows))
        want = np.lexsort((want_items, want_rows))
        if not (
            np.array_equal(rows[got], want_rows[want])
            and np.array_equal(items[got], want_items[want])
        ):
            raise NotApplicable("exclusions other than the seen items")
        return self._topk(users, int(k))

    def _topk(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        result = self.rec.recommend(users, k, exclude_seen=True, by_index=True)
        return result.scores, result.items


class TorchEngineBackend(RuntimeBackend):
    """The torch batch engine (:class:`~recsys_export.torch_engine.TorchEngine`) on
    ``device`` (default CPU): the bundle's pt2/TorchScript program with the engine's own
    exclusion and top-k (opt-in: ``verify --formats ...,torch_engine``). Pairs
    (``score``) do not apply."""

    name = "torch_engine"
    chunks_itself = False

    def __init__(self, path: Path, device: torch.device | None = None) -> None:
        from recsys_export.torch_engine import TorchEngine

        self.rec = TorchEngine.load(  # type: ignore[assignment]
            path, device=device or "cpu", verify=False
        )

    def score(self, users, items):
        raise NotApplicable("the torch engine scores whole rows only")

    def score_all(self, users):
        return self.rec.score_all(users)

    def _topk(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rec.topk(users, k, exclude_seen=True)  # type: ignore[attr-defined]


def load_backends(
    root: Path,
    manifest: dict[str, Any],
    formats: Iterable[str] | None = None,
    *,
    skipped: dict[str, str] | None = None,
    device: torch.device | None = None,
    providers: list[str] | None = None,
) -> dict[str, Backend]:
    """Backends for the formats present in a bundle (optionally a subset).

    Parameters
    ----------
    root : Path
        The bundle directory.
    manifest : dict
        Its manifest.
    formats : iterable of str, optional
        Formats to load (default: the export formats, :data:`FORMATS`); ``runtime`` and
        ``torch_engine`` add the Python runtime and the torch batch engine.
    skipped : dict, optional
        When given, a TorchScript or ``.pt2`` file the installed torch cannot read (one
        written by a newer torch) is left out and ``skipped[format]`` says why, naming
        both torch versions; without it the load error propagates.
    device : torch.device, optional
        Where the torch backends (TorchScript, ``.pt2``, the torch engine) run; checked
        by the caller (:func:`~recsys_export.torch_engine.resolve_device`). Default: the
        CPU path as before.
    providers : list of str, optional
        onnxruntime execution providers of the ONNX and runtime backends, validated by
        the caller (:func:`~recsys_export.runtime.engines.check_providers`); default
        ``["CPUExecutionProvider"]``.

    Returns
    -------
    dict
        Format name -> backend, for the formats the bundle has.
    """
    wanted = list(formats) if formats is not None else list(FORMATS)
    fm = manifest.get("formats", {})
    out: dict[str, Backend] = {}
    torch_loaded: dict[str, Callable[[], Backend]] = {}
    if "torchscript" in fm and "torchscript" in wanted:
        torch_loaded["torchscript"] = lambda: TorchScriptBackend(
            root / fm["torchscript"]["module"], device
        )
    if "pt2" in fm and "pt2" in wanted:
        torch_loaded["pt2"] = lambda: Pt2Backend(
            {e: root / p for e, p in fm["pt2"]["programs"].items()}, device
        )
    for name, make in torch_loaded.items():
        try:
            out[name] = make()
        except Exception as exc:  # torch raises KeyError, RuntimeError, ... for newer files
            if skipped is None:
                raise
            written = (manifest.get("versions") or {}).get("torch", "an unknown version")
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            skipped[name] = (
                f"{name} not checked: the installed torch {torch.__version__} cannot read the "
                f"{name} files written by torch {written} ({detail}); check them with torch "
                f"{written}"
            )
    if "onnx" in fm and "onnx" in wanted:
        graphs = {e: root / p for e, p in fm["onnx"]["graphs"].items()}
        out["onnx"] = OnnxBackend(graphs, providers)
    if "onnx" in fm and "runtime" in wanted and (root / "manifest.json").exists():
        out["runtime"] = RuntimeBackend(root, providers)
    if ({"pt2", "torchscript"} & set(fm)) and "torch_engine" in wanted:
        out["torch_engine"] = TorchEngineBackend(root, device)
    return out


def _seen_for(
    users: np.ndarray, indptr: np.ndarray, seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return runs_to_coo(indptr[users], indptr[users + 1], seen)
