"""The Ray job's worker: an actor holding one engine (:func:`recsys_export.engines.open_engine`)
that writes each block of users' top-k lists as one Parquet part, atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export import errors as _errors
from recsys_export.bundle import MANIFEST_NAME
from recsys_export.core.atomic import remove_path, replacing, temp_sibling
from recsys_export.engines import EngineOptions, open_engine
from recsys_export.errors import ConfigError, RecsysExportError, WorkerError
from recsys_export.runtime import writers
from recsys_export.runtime.sessions import check_providers

__all__ = ["PART_PATTERN", "SUCCESS_NAME", "BlockScorer", "error_class"]

SUCCESS_NAME = "_SUCCESS"
PART_PATTERN = "part-{block:06d}.parquet"
#: Users per top-k call inside a block (bounds the Arrow buffers of one write).
_SUB_CHUNK = 16_384


def _materialize(payload: dict[str, bytes], job: str) -> Path:
    """Write a shipped bundle (rel name -> bytes) into a temporary directory of this node.

    The directory is named after the job (a token of the driver's call), so the actors of
    one node, and an actor Ray restarts, share one copy: it is written to a private
    directory and renamed into place; whoever renames first wins.
    """
    final = Path(tempfile.gettempdir()) / f"recsys-export-bundle-{job}"
    if (final / MANIFEST_NAME).is_file():
        return final  # Recommender.load verifies every checksum
    work = temp_sibling(final)
    os.mkdir(work, 0o700)  # private, like mkdtemp
    try:
        # manifest last: a directory with a manifest is complete
        for rel in sorted(payload, key=lambda r: r == MANIFEST_NAME):
            dest = work / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(payload[rel])
        try:
            os.rename(work, final)
        except OSError:  # another actor of this node was first
            remove_path(work)
    except BaseException:
        remove_path(work)
        raise
    return final


class BlockScorer:
    """The actor: one engine of the contract, opened with
    :func:`~recsys_export.engines.open_engine` (onnxruntime, or with ``device`` the torch
    engine), scoring blocks of user indices through the runtime's writers.

    Construction never raises (a failed actor constructor is not restarted by Ray and
    its error is hard to read): errors are kept and reported by :meth:`info` and
    :meth:`score_block`.
    """

    def __init__(
        self,
        bundle_path: str,
        out_dir: str,
        k: int,
        exclude_seen: bool,
        threads: int,
        payload: list[Any] | None = None,
        device: str | None = None,
        providers: list[str] | None = None,
    ) -> None:
        self.pid = os.getpid()
        self.out_dir = Path(out_dir)
        self.k = k
        self.exclude_seen = exclude_seen
        self.error: tuple[str, str] | None = None
        self.engine: Any = None
        self.schema: Any = None
        self.reconstructed = False
        self.node = ""
        self.shipped: Path | None = None
        self.sub_chunk = _SUB_CHUNK
        self.providers: list[str] | None = None
        try:
            import ray

            ctx = ray.get_runtime_context()
            self.reconstructed = bool(ctx.was_current_actor_reconstructed)
            self.node = str(ctx.get_node_id())
        except Exception:  # not inside Ray (unit use): nothing to report
            pass
        try:
            root = bundle_path
            if payload is not None:
                import ray

                # a list around the ObjectRef: Ray does not resolve it for us, so the
                # bytes are fetched here (and again by a restarted actor)
                self.shipped = _materialize(ray.get(payload[0]), payload[1])
                root = str(self.shipped)
            options = EngineOptions("ray", device, providers, threads).for_workers()
            if options.engine == "onnx":
                # the onnxruntime engine's rule, against this worker's onnxruntime
                self.providers = check_providers(providers)
            self.engine = open_engine(
                root,
                engine=options.engine,
                device=options.device,
                providers=self.providers,
                threads=threads,
            )
            if self.engine.name == "torch":
                self.sub_chunk = min(_SUB_CHUNK, self.engine.chunk_users())
            self.schema = writers.engine_schema(self.engine)
            if not self.out_dir.is_dir():
                raise ConfigError(
                    f"output directory {self.out_dir} does not exist on this worker (pid "
                    f"{self.pid}); put --out on a filesystem every Ray node can write"
                )
        except RecsysExportError as exc:
            self.error = (type(exc).__name__, str(exc))
        except Exception as exc:
            self.error = ("WorkerError", f"{type(exc).__name__}: {exc}")

    def info(self) -> dict[str, Any]:
        """pid, node id, whether Ray restarted this actor, its onnxruntime execution
        providers (None for torch-engine workers) and a load error if any."""
        return {
            "pid": self.pid,
            "node": self.node,
            "reconstructed": self.reconstructed,
            "providers": self.providers,
            "error": self.error,
        }

    def score_block(self, block: int, start: int, stop: int) -> dict[str, Any]:
        """Score users ``start..stop-1`` and write ``part-{block:06d}.parquet`` atomically."""
        if self.error is not None:
            raise error_class(self.error[0])(self.error[1])
        import pyarrow.parquet as pq

        t0 = time.perf_counter()
        name = PART_PATTERN.format(block=block)
        final = self.out_dir / name
        users = np.arange(start, stop, dtype=np.int64)
        rows = 0
        # a retried block replaces the same file: no duplicates
        with (
            replacing(final) as tmp,
            contextlib.closing(pq.ParquetWriter(str(tmp), self.schema)) as writer,
        ):
            for s in range(0, users.size, self.sub_chunk):
                table = writers.topk_table(
                    self.engine,
                    users[s : s + self.sub_chunk],
                    self.k,
                    exclude_seen=self.exclude_seen,
                )
                writer.write_table(table)
                rows += table.num_rows
        return {
            "block": block,
            "start": start,
            "stop": stop,
            "users": stop - start,
            "rows": rows,
            "file": name,
            "pid": self.pid,
            "node": self.node,
            "reconstructed": self.reconstructed,
            "seconds": time.perf_counter() - t0,
        }

    def release(self) -> None:
        """Delete this node's copy of a shipped bundle (called once all blocks are done)."""
        if self.shipped is not None:
            shutil.rmtree(self.shipped, ignore_errors=True)
            self.shipped = None


def error_class(name: str) -> type[RecsysExportError]:
    if name == "WorkerError":
        return WorkerError
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, RecsysExportError):
        return cls
    return WorkerError
