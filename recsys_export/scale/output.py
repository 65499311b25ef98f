"""The Ray job's output directory: checked and emptied before, complete and marked after."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from recsys_export.bundle import MANIFEST_NAME, Bundle
from recsys_export.core.atomic import write_text_atomic
from recsys_export.errors import ConfigError, WorkerError
from recsys_export.scale.worker import PART_PATTERN, SUCCESS_NAME

__all__ = ["bundle_payload", "finish_out_dir", "prepare_out_dir"]


def _is_ours(name: str) -> bool:
    return (
        name == SUCCESS_NAME
        or name.startswith(".part-")
        or name.startswith("._SUCCESS")
        or (name.startswith("part-") and name.endswith(".parquet"))
    )


def prepare_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    path = Path(os.path.abspath(os.fspath(out_dir)))
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"cannot write {path}: it is a file; --out names a directory for the part files"
        )
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        if entries:
            if not overwrite:
                raise ConfigError(
                    f"output directory {path} is not empty ({len(entries)} entries, e.g. "
                    f"{entries[0]!r}); choose a new --out or pass --force to replace a "
                    "previous top-k output there"
                )
            foreign = [e for e in entries if not _is_ours(e)]
            if foreign:
                raise ConfigError(
                    f"output directory {path} holds files that are not top-k output "
                    f"({', '.join(foreign[:3])}); --force only replaces part-*.parquet and "
                    f"{SUCCESS_NAME}: choose another --out"
                )
            # _SUCCESS first: a reader never sees a success marker over missing parts.
            for name in sorted(entries, key=lambda e: e != SUCCESS_NAME):
                (path / name).unlink()
    else:
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(
                f"cannot create {path}: directory {parent} does not exist; create it first"
            )
        try:
            path.mkdir()
        except OSError as exc:
            raise ConfigError(f"cannot create {path}: {exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: directory is not writable")
    return path


def bundle_payload(bundle: Bundle) -> dict[str, bytes]:
    """Every file of a (verified) bundle: manifest + listed files, rel name -> bytes."""
    # the files the bundle checked and holds open, even if it was replaced since
    payload = {MANIFEST_NAME: bundle.read_bytes(MANIFEST_NAME)}
    for rel in bundle.files:
        payload[rel] = bundle.read_bytes(rel)
    return payload


def finish_out_dir(
    out: Path, n_blocks: int, records: dict[int, Any], summary: dict[str, Any]
) -> list[str]:
    """Check every block's part is there, drop temporaries of killed attempts, write
    ``_SUCCESS`` (``summary`` plus the part names) last; return the part names."""
    missing = [j for j in range(n_blocks) if j not in records]
    files = [PART_PATTERN.format(block=j) for j in range(n_blocks)]
    absent = [f for f in files if not (out / f).is_file()]
    if missing or absent:  # cannot happen unless someone deletes files under us
        raise WorkerError(
            f"output {out} is incomplete (blocks {missing[:5]}, files {absent[:5]} "
            "missing); rerun with --force"
        )
    for stray in out.iterdir():  # temporaries of killed attempts
        if stray.name.startswith(".part-"):
            try:
                stray.unlink()
            except OSError:
                pass
    summary["files"] = files
    write_text_atomic(out / SUCCESS_NAME, json.dumps(summary, indent=2) + "\n")
    return files
