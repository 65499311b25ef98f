"""``recsys-export serve``: the bundle as an HTTP service (uvicorn, or Ray Serve)."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_export.cli.options import Command
from recsys_export.errors import ConfigError

if TYPE_CHECKING:
    from recsys_export.serve.config import ServeConfig

DESCRIPTION = (
    "Serve BUNDLE as a recommendation service: POST /recommend, POST /score, GET /model, "
    "/healthz, /readyz, GET /metrics (Prometheus) and the Open Inference Protocol (/v2/...). "
    "Concurrent requests are batched; a new bundle exported to the path (export --force) is "
    "swapped in without failing a request. Needs the 'serve' extra. Binds loopback unless "
    "told otherwise. Reference: docs/serving.md."
)
EPILOG = (
    "examples:\n  recsys-export serve artifacts/mf                 # http://127.0.0.1:8000\n"
    '  curl -s localhost:8000/recommend -d \'{"users": ["42"], "k": 10}\'\n'
    "  recsys-export serve artifacts/mf --host 0.0.0.0 --token-file token.txt\n"
    "  recsys-export serve artifacts/mf --workers 4     # a 4-core machine, one port\n"
    "  recsys-export serve artifacts/mf --ray --replicas 2"
)

#: The serve extra's modules: without them ``serve`` names the extra.
SERVE_EXTRA_MODULES = frozenset(
    {"starlette", "uvicorn", "prometheus_client", "httptools", "orjson"}
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (those of :class:`~recsys_export.serve.config.ServeConfig`)."""
    from recsys_export.serve.config import DEFAULTS as D

    p.add_argument("bundle", type=Path)
    p.add_argument("--host", help=f"address to bind (default {D.host})")
    p.add_argument("--port", type=int, help=f"port (default {D.port}; 0: any free)")
    p.add_argument("--model-name", help="name on the /v2 routes (default: the bundle's dir name)")
    p.add_argument("--token-file", type=Path, help="bearer token clients must send")
    p.add_argument("--insecure", action="store_true", help="non-loopback bind without a token")
    g = p.add_argument_group("batching and overload (defaults measured: docs/serving.md)")
    g.add_argument("--max-batch", type=int, help=f"users per engine call (default {D.max_batch})")
    g.add_argument(
        "--max-delay-us",
        type=int,
        help=f"longest wait for a batch to fill (default {D.max_delay_us})",
    )
    g.add_argument(
        "--max-queue", type=int, help=f"requests waiting; 503 past (default {D.max_queue})"
    )
    g.add_argument(
        "--concurrency", type=int, help=f"engine calls at once (default {D.concurrency})"
    )
    g.add_argument("--deadline-ms", type=int, help=f"503 if not answered (default {D.deadline_ms})")
    g.add_argument("--max-body-bytes", type=int, help=f"413 past it (default {D.max_body_bytes})")
    g.add_argument("--max-users", type=int, help=f"users/pairs per request (default {D.max_users})")
    g.add_argument(
        "--threads",
        type=int,
        help="onnxruntime threads per engine call (default: the cores left by the event "
        "loops, shared by the calls in flight, at least 1)",
    )
    g.add_argument(
        "--workers",
        type=int,
        help="server processes on one port; one process runs its Python on about one core "
        f"(the GIL), so with more cores use more (default {D.workers})",
    )
    g.add_argument(
        "--watch-interval",
        type=float,
        help=f"seconds between checks (default {D.watch_interval_s})",
    )
    g.add_argument("--no-watch", action="store_true", help="do not watch for a new bundle")
    g.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="uvicorn's log level (default info)",
    )
    g.add_argument("--access-log", action="store_true", help="log every request (slower)")
    r = p.add_argument_group("Ray Serve (needs the 'ray' extra too)")
    r.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment")
    r.add_argument("--replicas", type=int, help="Ray Serve replicas (default 1)")
    r.add_argument("--address", help="Ray cluster address (default: a local Ray)")


def _config(args: argparse.Namespace) -> ServeConfig:
    from recsys_export.serve.config import ServeConfig, read_token

    given = {
        "host": args.host,
        "port": args.port,
        "max_batch": args.max_batch,
        "max_delay_us": args.max_delay_us,
        "max_queue": args.max_queue,
        "concurrency": args.concurrency,
        "deadline_ms": args.deadline_ms,
        "max_body_bytes": args.max_body_bytes,
        "max_users": args.max_users,
        "watch_interval_s": args.watch_interval,
        "workers": args.workers,
    }
    options = {key: value for key, value in given.items() if value is not None}
    if args.no_watch:
        options["watch_interval_s"] = None
    return ServeConfig(
        bundle=args.bundle,
        model_name=args.model_name,
        threads=args.threads,
        token=read_token(args.token_file) if args.token_file else None,
        insecure=args.insecure,
        **options,
    ).check()


def cmd_serve(args: argparse.Namespace) -> int:
    """``recsys-export serve BUNDLE``: serve until Ctrl-C / SIGTERM."""
    try:
        config = _config(args)
        if args.ray:
            if config.workers > 1:
                raise ConfigError("--workers is for the embedded server; with --ray use --replicas")
            return _serve_ray(args, config)
        from recsys_export.serve.run import serve_forever
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in SERVE_EXTRA_MODULES | {"ray"}:
            raise
        extra = "ray" if top == "ray" else "serve"
        raise ConfigError(
            f"serve{' --ray' if args.ray else ''} needs the '{extra}' extra ({exc.name} is not "
            f"installed): pip install 'recsys-export[{'serve,ray' if args.ray else 'serve'}]'"
        ) from None
    if threading.current_thread() is threading.main_thread():
        # uvicorn stops gracefully on SIGTERM, then re-raises it to this handler: exit 0
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    level = {} if args.log_level is None else {"log_level": args.log_level}
    serve_forever(config, access_log=args.access_log, **level)
    return 0


def _serve_ray(args: argparse.Namespace, config: ServeConfig) -> int:
    from ray import serve

    from recsys_export.serve.ray_app import DEFAULT_REPLICAS, start_on_ray

    replicas = DEFAULT_REPLICAS if args.replicas is None else args.replicas
    url = start_on_ray(config, replicas=replicas, address=args.address)
    print(f"serving {config.name} on {url} with {replicas} Ray Serve replica(s)", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()


SERVE = Command(
    name="serve",
    help="serve a bundle over HTTP (JSON API, Open Inference Protocol, metrics)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_options=add_arguments,
    run=cmd_serve,
)
