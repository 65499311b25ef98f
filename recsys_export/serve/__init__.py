"""``recsys-export serve``: a bundle as a recommendation service (ASGI, Starlette).

The app (:func:`~recsys_export.serve.app.create_app`) answers ``POST /recommend``,
``POST /score``, ``GET /model``, the health probes, ``GET /metrics`` (Prometheus) and
the Open Inference Protocol (``/v2/...``); it coalesces concurrent requests into one
engine call (dynamic batching), answers overload with ``503`` at once, and swaps in a
new bundle exported to its path without failing a request. docs/serving.md has the API.

Modules, each one concern:

* :mod:`~recsys_export.serve.config`: the settings and the bind rule (loopback, token);
* :mod:`~recsys_export.serve.engine`: the one adapter to the runtime (load, warm,
  answer batches, describe);
* :mod:`~recsys_export.serve.batching`: the dynamic batcher and its bounded queue;
* :mod:`~recsys_export.serve.swap`: the served model and the bundle watcher;
* :mod:`~recsys_export.serve.metrics`: Prometheus metrics;
* :mod:`~recsys_export.serve.schema`: JSON bodies in and out;
* :mod:`~recsys_export.serve.http`: the request and the answer on bare ASGI;
* :mod:`~recsys_export.serve.app`, :mod:`~recsys_export.serve.routes`,
  :mod:`~recsys_export.serve.oip`: the ASGI app and its routes;
* :mod:`~recsys_export.serve.server`: the app on uvicorn (the socket, one process),
  :mod:`~recsys_export.serve.workers`: several processes on one port,
  :mod:`~recsys_export.serve.run`: ``serve`` itself (one process or workers), and
  :mod:`~recsys_export.serve.ray_app`: the same app as a Ray Serve deployment.

Like the runtime it never imports torch; it needs the ``serve`` extra (Starlette,
uvicorn, httptools, uvloop, prometheus-client, orjson), and Ray Serve the ``ray`` extra
too.
"""

from __future__ import annotations

from recsys_export.serve.config import ServeConfig

__all__ = ["ServeConfig"]
