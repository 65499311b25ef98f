"""Hot swap: the served bundle, and the watcher that replaces it.

``export --force`` replaces a bundle directory with one atomic rename (an exchange), so
the directory *at the path* changes identity (:func:`recsys_export.bundle.dir_identity`)
exactly when a complete new bundle is there. :class:`ModelHolder` polls that identity;
on a change it loads the new bundle on a thread (checksums, the recorded parity verdict,
every session warmed) while the old one keeps serving, then swaps one reference. A batch
reads the reference once, so each response comes from one bundle and names its version.
A bundle that fails to load is refused (a log line, ``recsys_bundle_swaps_total
{outcome="refused"}``); it is not tried again until the path changes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from recsys_export.bundle import dir_identity
from recsys_export.errors import RecsysExportError
from recsys_export.serve.engine import ServedModel
from recsys_export.serve.metrics import Metrics

__all__ = ["ModelHolder"]

log = logging.getLogger("recsys_export.serve")


class ModelHolder:
    """The served model and the watcher of its bundle path.

    Parameters
    ----------
    path : path
        The bundle directory served and watched.
    model : ServedModel
        The bundle loaded from it.
    metrics : Metrics
        Where swaps and the served version are recorded.
    threads : int, optional
        onnxruntime intra-op threads of the bundles loaded later.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: ServedModel,
        metrics: Metrics,
        *,
        threads: int | None = None,
    ) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.model = model
        self._metrics = metrics
        self._threads = threads
        self._considered = model.identity
        self._task: asyncio.Task[None] | None = None
        metrics.serving(model.version, model.kind)

    def start(self, interval_s: float) -> None:
        """Poll the path every ``interval_s`` seconds (on the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._watch(interval_s))

    async def stop(self) -> None:
        """Stop watching (a load in progress finishes on its thread, unused)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except Exception:  # never let the watcher die: the old bundle keeps serving
                log.exception("the bundle watcher failed; still serving %s", self.model.version)

    async def check(self) -> bool:
        """Look at the path once; load and swap in a new bundle there. True if swapped."""
        identity = dir_identity(self.path)
        if identity is None or identity == self._considered:
            return False  # nothing there (mid-rename fallback), or nothing new
        self._considered = identity
        return await asyncio.to_thread(self._load)

    def _load(self) -> bool:
        old = self.model
        try:
            new = ServedModel.load(self.path, threads=self._threads)
        except Exception as exc:  # a bundle error, or anything loading it raised
            self._metrics.swaps.labels("refused").inc()
            if not isinstance(exc, RecsysExportError):
                log.exception("loading the new bundle failed")
            message = " ".join(str(exc).split())
            log.warning(
                "refused the new bundle: %s; still serving version %s", message, old.version
            )
            return False
        if new.version == old.version:
            return False
        self.model = new
        self._metrics.swaps.labels("swapped").inc()
        self._metrics.serving(new.version, new.kind)
        log.info("serving bundle version %s (was %s)", new.version, old.version)
        return True
