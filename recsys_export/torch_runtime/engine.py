"""Torch engine for batch work: full score matrices and top-k for every user on a device.

:class:`TorchEngine` runs a bundle's ``.pt2`` ``score_all`` program (or its TorchScript
module where the ``.pt2`` program is absent or cannot load) on ``cpu`` or
``cuda[:N]``. A bundle exported with the default formats (ONNX and TorchScript; ``.pt2``
is opt-in, ``export --formats all``) runs its TorchScript module; ``source`` says which
program scores. Seen-item exclusion, top-k and the empty-slot rule (``-1`` item,
``-inf`` score) run on the device too. Results go through the same writers as the
onnxruntime runtime (:mod:`recsys_export.runtime`), so the files are identical in
format, written atomically (temporary file + rename), with the same progress bar::

    eng = TorchEngine.load("bundle", device="cuda")
    eng.write_score_matrix("scores.npy")
    eng.write_topk("top10.parquet", k=10)

This module imports torch (the ``train`` extra); the torch-free runtime never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from recsys_export.core.defaults import DEFAULT_MEMORY_MB
from recsys_export.errors import BundleError, ConfigError

try:
    import torch
except ImportError:  # a runtime-only install
    raise ConfigError(
        "the torch engine needs torch, which this install lacks: "
        "pip install 'recsys-export[train]' (or use --engine local)"
    ) from None

from recsys_export.bundle import Bundle
from recsys_export.core.topk import check_k
from recsys_export.core.validation import check_choice, check_positive
from recsys_export.runtime import writers
from recsys_export.runtime.protocol import EngineBase
from recsys_export.torch_runtime.device import resolve_device
from recsys_export.torch_runtime.io import load_exported_module, load_torchscript
from recsys_export.torch_runtime.ops import topk_excluding

__all__ = ["TorchEngine"]

#: Largest user block per ``score_all`` call (the issue's measured CUDA blocks were
#: 4096 users for MF and 1024 for DenseNet).
_MAX_BLOCK = 4096
#: Share of the free device memory (``torch.cuda.mem_get_info``) a block may use.
_CUDA_FREE_SHARE = 0.5


class TorchEngine(EngineBase):
    """A bundle's torch program on a device, for whole-catalogue batch scoring.

    Create it with :meth:`load` (or :func:`recsys_export.engines.open_engine` with
    ``engine="torch"``). The torch engine of the contract
    (:class:`~recsys_export.runtime.protocol.Engine`, ``name == "torch"``). Users are
    dense indices (``0 .. n_users - 1``). The batch outputs (:meth:`write_score_matrix`,
    :meth:`write_topk`, :meth:`topk_rows`, :meth:`topk_table`, :meth:`iter_score_all`)
    are the runtime's writers (:mod:`recsys_export.runtime.writers`, shared with
    :class:`~recsys_export.runtime.Recommender`): same files, atomicity and progress
    bar. A ``memory_budget_mb`` of None sizes blocks from the free device memory on
    CUDA, from 256 MB on CPU (:meth:`block_size`).

    Attributes
    ----------
    device : torch.device
        Where the program, the seen-items CSR and every block run.
    source : str
        ``"pt2"`` or ``"torchscript"``: which bundle program scores.
    """

    name = "torch"

    def __init__(
        self,
        bundle: Bundle,
        score_all: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        source: str,
    ) -> None:
        self._bind(bundle)
        self.device = device
        self.source = source
        self._score_all = score_all
        model = bundle.manifest.model
        if self._kind == "densenet":
            # the frozen module's relu(a + c) holds [B, hidden, n_items] at once
            self._bytes_per_user = self._n_items * 4 * (max(1, model.hidden) + 3)
        else:
            # scores, their masked copy
            self._bytes_per_user = self._n_items * 4 * 2
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None
        self._seen_host: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        bundle_path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        *,
        verify: bool = True,
        prefer: str = "pt2",
    ) -> TorchEngine:
        """Load a bundle (checksums verified unless ``verify=False``) onto ``device``.

        Parameters
        ----------
        bundle_path : path
            The bundle directory (exported with ``pt2`` and/or ``torchscript``; the
            default export formats give the TorchScript module).
        device : str or torch.device
            ``"cpu"`` or ``"cuda[:N]"``.
        verify : bool
            Check every file's sha256 (sizes and names are always checked).
        prefer : {"pt2", "torchscript"}
            The program to try first; the other one is the fallback (also where the
            bundle lacks the preferred one, as default bundles lack ``pt2``).

        Raises
        ------
        ConfigError
            An unusable device, or a bad ``prefer``.
        BundleError
            A missing/corrupted bundle, or one whose torch programs cannot load.
        """
        check_choice("prefer", prefer, ("pt2", "torchscript"))
        dev = resolve_device(device)
        bundle = Bundle.load(bundle_path, verify=verify)
        order = ("pt2", "torchscript") if prefer == "pt2" else ("torchscript", "pt2")
        problems = []
        for source in order:
            try:
                fn = _load_program(bundle, source, dev)
            except _Absent:
                continue
            except Exception as exc:  # torch raises many types; fall back, then report
                problems.append(f"{source}: {' '.join(str(exc).split())[:300]}")
                continue
            engine = cls(bundle, fn, dev, source)
            try:
                engine._probe()
            except Exception as exc:
                problems.append(f"{source}: {' '.join(str(exc).split())[:300]}")
                continue
            return engine
        if not problems:
            raise BundleError(
                f"bundle {bundle.root} has neither a pt2 score_all program nor a TorchScript "
                "module; the torch engine needs one: re-export with the default formats (onnx,"
                "torchscript) or --formats all"
            )
        raise BundleError(
            f"bundle {bundle.root}: no torch program loads on {dev} ({'; '.join(problems)})"
        )

    def _probe(self) -> None:
        """Run two users (or one) through the program: fail at load, not mid-write."""
        users = np.arange(min(2, self._n_users), dtype=np.int64)
        out = self._scores(users)
        if tuple(out.shape) != (users.size, self._n_items):
            raise BundleError(
                f"score_all gave shape {tuple(out.shape)} for {users.size} users, expected "
                f"({users.size}, {self._n_items})"
            )

    # ------------------------------------------------------------------ properties
    @property
    def bytes_per_user(self) -> int:
        """Bytes of device memory per user in one ``score_all`` block (block sizing)."""
        return self._bytes_per_user

    def __repr__(self) -> str:
        return (
            f"TorchEngine({str(self.bundle.root)!r}, kind={self._kind}, source={self.source}, "
            f"device={self.device}, n_users={self._n_users}, n_items={self._n_items})"
        )

    # ------------------------------------------------------------------ blocks
    def block_size(self, memory_budget_mb: float | None = None) -> int:
        """Users per ``score_all`` call.

        From ``memory_budget_mb`` when given; otherwise on CUDA from the free device
        memory (``torch.cuda.mem_get_info``, half of it), on CPU from 256 MB. At least 1,
        at most 4096.

        Raises
        ------
        ConfigError
            A non-positive budget.
        """
        if memory_budget_mb is not None:
            memory_budget_mb = check_positive("memory_budget_mb", memory_budget_mb)
            budget = int(memory_budget_mb * (1 << 20))
        elif self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            budget = int(free * _CUDA_FREE_SHARE)
        else:
            budget = DEFAULT_MEMORY_MB << 20
        return int(min(_MAX_BLOCK, max(1, budget // self._bytes_per_user)))

    def _scores(self, users: np.ndarray) -> torch.Tensor:
        """``float32[len(users), n_items]`` on the device (indices already validated)."""
        u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64)).to(self.device)
        if u.numel() == 1:
            # torch.export specialises a batch of 1: score two rows, keep one
            return self._score_all(u.repeat(2))[:1]
        return self._score_all(u)

    # ------------------------------------------------------------------ the engine contract
    def chunk_users(self, memory_budget_mb: float | None = None) -> int:
        """Users per block of the batch writers: :meth:`block_size`."""
        return self.block_size(memory_budget_mb)

    def score_all_into(self, users: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[len(users), n_items]`` with validated users' scores (on the host)."""
        with torch.inference_mode():
            out[...] = self._scores(users).cpu().numpy()

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``float32[n]`` scores of validated index pairs (each distinct user's row once)."""
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if users.size == 0:
            return np.zeros(0, dtype=np.float32)
        distinct, row = np.unique(users, return_inverse=True)
        out = np.empty(users.size, dtype=np.float32)
        size = self.block_size()
        for start in range(0, distinct.size, size):
            block = distinct[start : start + size]
            scores = np.empty((block.size, self._n_items), dtype=np.float32)
            self.score_all_into(block, scores)
            mine = (row >= start) & (row < start + block.size)
            out[mine] = scores[row[mine] - start, items[mine]]
        return out

    def close(self) -> None:
        """Drop the seen items held on the device (the program goes with the object)."""
        self._seen = None

    def score_all_blocks(
        self, user_indices: Any = None, *, memory_budget_mb: float | None = None
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(user_index_block, float32[len(block), n_items] on the device)``.

        Indices are validated before anything runs (default: every user in order);
        blocks are sized by :meth:`block_size`.

        Raises
        ------
        UnknownIdError
            An index out of range.
        """
        users = writers.users_of(self, user_indices)
        size = self.block_size(memory_budget_mb)
        with torch.inference_mode():
            for start in range(0, users.size, size):
                block = users[start : start + size]
                yield block, self._scores(block)

    def score_all(self, user_indices: Any) -> np.ndarray:
        """``float32[len(user_indices), n_items]`` scores of user indices, on the host.

        Raises
        ------
        UnknownIdError
            An index out of range.
        """
        users = writers.users_of(self, user_indices)
        out = np.empty((users.size, self._n_items), dtype=np.float32)
        size = self.block_size()
        for start in range(0, users.size, size):
            self.score_all_into(users[start : start + size], out[start : start + size])
        return out

    def seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr int64[n_users + 1], items int64[nnz])``: every item each user rated."""
        if self._seen_host is None:
            self._seen_host = self.bundle.seen_csr()
        return self._seen_host

    def seen_on_device(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bundle's seen-items CSR ``(indptr, items)`` as int64 tensors on the device."""
        if self._seen is None:
            indptr, items = self.seen_csr()
            self._seen = (
                torch.from_numpy(np.ascontiguousarray(indptr)).to(self.device),
                torch.from_numpy(np.ascontiguousarray(items)).to(self.device),
            )
        return self._seen

    def _seen_pairs(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """COO ``(rows, items)`` of the seen items of ``users`` (rows: block positions)."""
        indptr, items = self.seen_on_device()
        u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64)).to(self.device)
        starts = indptr[u]
        counts = indptr[u + 1] - starts
        rows = torch.repeat_interleave(torch.arange(u.numel(), device=self.device), counts)
        # position of each pair inside its user's run, then the CSR offset
        run_start = torch.cumsum(counts, 0) - counts
        within = torch.arange(rows.numel(), device=self.device) - run_start[rows]
        return rows, items[starts[rows] + within]

    def topk(
        self, users: np.ndarray, k: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores float32[B, k], items int64[B, k])`` of user indices.

        Exclusion, top-k and the empty-slot rule (``-inf`` / ``-1``) run on the device.

        Raises
        ------
        ConfigError
            A bad ``k``.
        UnknownIdError
            An index out of range.
        """
        k = check_k(k, self._n_items)
        users = writers.users_of(self, users)
        with torch.inference_mode():
            return self._topk_block(users, k, exclude_seen)

    def _topk_block(
        self, users: np.ndarray, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = self._scores(users)
        if exclude_seen:
            rows, items = self._seen_pairs(users)
        else:
            rows = items = torch.zeros(0, dtype=torch.int64, device=self.device)
        values, idx = topk_excluding(scores, k, rows, items)
        return values.cpu().numpy(), idx.cpu().numpy()


class _Absent(Exception):
    """The bundle has no program of this format."""


def _load_program(
    bundle: Bundle, source: str, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The bundle's ``score_all`` as a callable on ``device`` (raises :class:`_Absent`)."""
    formats = bundle.manifest.formats
    if source == "pt2":
        rel = formats.pt2.programs.get("score_all") if formats.pt2 is not None else None
        if rel is None:
            raise _Absent(source)
        return load_exported_module(bundle.file(rel), device)
    if formats.torchscript is None:
        raise _Absent(source)
    module = load_torchscript(bundle.file(formats.torchscript.module), device)
    return module.score_all  # type: ignore[no-any-return]
