"""Timing helpers of the torch engine on a device, shared by ``bench`` and the GPU check.

:func:`device_timings` times :class:`~recsys_export.torch_runtime.engine.TorchEngine` (score_all
over every user, top-k for every user, on the device, no writing) next to a bare
``torch.matmul`` (+ ``torch.topk``) ceiling of the same shape in the same blocks: the
rows ``recsys-export bench`` adds when a CUDA device is visible, and
``benchmarks/gpu_check.py``'s timings. Every run is synchronised with the device.

Imports torch (the ``train`` extra); the torch-free runtime never imports this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from recsys_export.engines import open_engine
from recsys_export.torch_runtime.engine import TorchEngine

__all__ = ["cuda_unavailable_reason", "device_timings", "matmul_ceiling", "sync", "timed_runs"]


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA device is visible to torch, else one line saying why not."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"no CUDA device: torch {torch.__version__} is a CPU-only build"
    return f"no CUDA device visible (torch {torch.__version__}, CUDA {torch.version.cuda})"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn: Callable[[], Any], device: torch.device, repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` runs of ``fn`` after one warm-up, each synchronised."""
    fn()
    sync(device)
    runs = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - t0)
    return runs


def matmul_ceiling(
    n_users: int, n_items: int, width: int, k: int, block: int, device: torch.device
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Bare ``[users, width] x [width, items]`` matmul (and matmul + topk) over every
    user in blocks of ``block`` on ``device``: ``(score, topk)`` callables, the ceiling."""
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(n_users, width, generator=gen).to(device)
    q_t = torch.randn(width, n_items, generator=gen).to(device)

    def score() -> None:
        with torch.inference_mode():
            for s in range(0, n_users, block):
                torch.matmul(p[s : s + block], q_t)

    def topk() -> None:
        with torch.inference_mode():
            for s in range(0, n_users, block):
                torch.topk(torch.matmul(p[s : s + block], q_t), k, dim=1)

    return score, topk


def device_timings(
    bundle: str | os.PathLike[str] | TorchEngine,
    device: str | torch.device,
    *,
    k: int,
    width: int,
    repeat: int = 3,
    memory_budget_mb: float | None = None,
) -> dict[str, Any]:
    """Time the torch engine and the matmul ceiling on ``device``.

    Parameters
    ----------
    bundle : path or TorchEngine
        A bundle with a pt2/TorchScript program, or an engine already loaded.
    device : str or torch.device
        ``"cpu"`` or ``"cuda[:N]"`` (ignored when ``bundle`` is an engine).
    k : int
        Top-k size.
    width : int
        Inner dimension of the ceiling's matmul (MF: ``factors + 2``).
    repeat : int
        Timed runs after one warm-up.
    memory_budget_mb : float, optional
        Block budget (None: free device memory on CUDA, 256 MB on CPU).

    Returns
    -------
    dict
        ``engine`` (the loaded engine), ``load_s``, ``block_users``, and lists of run
        seconds ``engine_score_all``, ``engine_topk``, ``ceiling_score_all``,
        ``ceiling_topk``.
    """
    t0 = time.perf_counter()
    if isinstance(bundle, TorchEngine):
        eng = bundle
    else:
        eng = cast(TorchEngine, open_engine(bundle, engine="torch", device=str(device)))
    sync(eng.device)
    load_s = time.perf_counter() - t0
    block = eng.block_size(memory_budget_mb)
    users = np.arange(eng.n_users, dtype=np.int64)

    def engine_score() -> None:
        for _block, _scores in eng.score_all_blocks(memory_budget_mb=memory_budget_mb):
            pass

    def engine_topk() -> None:
        for s in range(0, users.size, block):
            eng.topk(users[s : s + block], k)

    out: dict[str, Any] = {"engine": eng, "load_s": load_s, "block_users": block}
    out["engine_score_all"] = timed_runs(engine_score, eng.device, repeat)
    out["engine_topk"] = timed_runs(engine_topk, eng.device, repeat)
    ceil_score, ceil_topk = matmul_ceiling(eng.n_users, eng.n_items, width, k, block, eng.device)
    out["ceiling_score_all"] = timed_runs(ceil_score, eng.device, repeat)
    out["ceiling_topk"] = timed_runs(ceil_topk, eng.device, repeat)
    return out
