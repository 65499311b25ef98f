"""Helpers of the serve tests: bundles, the app in process, a real server, metrics.

``swap_in`` replaces a served bundle the way ``export --force`` does (a complete copy
beside it, then one atomic exchange). ``running`` runs an app's lifespan and yields an
httpx client on it (no sockets). ``start_server`` runs ``recsys-export serve`` on an
ephemeral loopback port. Waiting is a bounded poll with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from recsys_export.bundle import update_bundle
from recsys_export.core.atomic import RENAME_EXCHANGE, renameat2, temp_sibling

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"


def copy_bundle(src: Path, dest: Path) -> Path:
    """A private copy (no hard links: tests alter copies)."""
    shutil.copytree(src, dest)
    return dest


def swap_in(src: Path, dest: Path) -> None:
    """Replace ``dest`` by a copy of ``src`` with one atomic exchange, as export does."""
    tmp = temp_sibling(dest)
    shutil.copytree(src, tmp)
    try:
        renameat2(tmp, dest, RENAME_EXCHANGE)
    except OSError:  # no renameat2 here: the exporter's fallback, two renames
        old = temp_sibling(dest, "old")
        os.rename(dest, old)
        os.rename(tmp, dest)
        tmp = old
    shutil.rmtree(tmp)


def name_items(bundle: Path, names: list[str | None]) -> None:
    """Give a bundle item names (as ``train --items`` would have)."""
    data = json.dumps(names).encode()
    update_bundle(
        bundle,
        manifest_updates={"item_names": "ids/item_names.json"},
        new_files={"ids/item_names.json": (data, "item_names")},
    )


def expected_rows(rec: Any, user_ids: Any, **kwargs: Any) -> list[dict]:
    """What /recommend must answer: the runtime's result, empty slots left out."""
    res = rec.recommend(user_ids, **kwargs)
    rows = []
    for r, user in enumerate(res.users.tolist()):
        keep = [j for j, s in enumerate(res.scores[r]) if s != -np.inf]
        row = {
            "user": user,
            "items": [res.items[r][j] for j in keep],
            "scores": [None if np.isnan(s) else float(s) for s in res.scores[r][keep]],
        }
        if res.names is not None:
            row["names"] = [res.names[r][j] for j in keep]
        if res.fallback.size and res.fallback[r]:
            row["fallback"] = True
        rows.append(row)
    return rows


def same_rows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["user"] == w["user"] and g["items"] == w["items"]
        assert g.get("names") == w.get("names") and g.get("fallback") == w.get("fallback")
        gs = np.array([np.nan if s is None else s for s in g["scores"]], dtype=np.float64)
        ws = np.array([np.nan if s is None else s for s in w["scores"]], dtype=np.float64)
        np.testing.assert_allclose(gs, ws, rtol=1e-6, atol=1e-7, equal_nan=True)


def gate_engine(app: Any) -> threading.Event:
    """Make the served model's recommend block until the returned event is set."""
    model = app.state.server.model
    gate = threading.Event()
    original = model.recommend_batch

    def gated(reqs):
        assert gate.wait(30), "the test never opened the gate"
        return original(reqs)

    model.recommend_batch = gated
    return gate


async def now(value: bool) -> bool:
    """``value`` as an awaitable (the checks :func:`until` polls)."""
    return value


def run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine to the end (the tests are plain functions)."""
    return asyncio.run(coro)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app's lifespan; yield an in-process client; shut it down."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            yield client


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition text (0 if absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@contextlib.contextmanager
def start_server(*args: str, timeout: float = 60.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """``recsys-export serve ARGS --port 0`` in a subprocess; yield (process, base URL)."""
    cmd = [sys.executable, "-m", "recsys_export.cli", "serve", *args, "--port", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        line = proc.stdout.readline() if ready else ""
        if "http://" not in line:
            proc.kill()
            raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
        url = line.split(" on ", 1)[1].split()[0]
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def generic_bundle(dest: Path) -> Path:
    """A generic own-model bundle (a small two-tower; int users 1000+, string items)."""
    import numpy as np
    import pandas as pd
    import torch
    from helpers.own_models import TwoTower

    from recsys_export.byom import export_model

    rng = np.random.default_rng(0)
    n_users, n_items = 12, 9
    mask = rng.random((n_users, n_items)) < 0.3
    mask[:, 0] = True
    u, i = np.nonzero(mask)
    df = pd.DataFrame(
        {
            "userId": 1000 + 7 * u,
            "movieId": [f"film-{j:02d}" for j in i],
            "rating": rng.integers(1, 6, u.size).astype(float),
        }
    )
    torch.manual_seed(0)
    module = TwoTower(n_users, n_items, 4, 8)
    export_model(module, dest, ratings=df, formats="onnx")
    return dest
