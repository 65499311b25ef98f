"""``recsys-export serve``: the bundle as an HTTP service (uvicorn, or Ray Serve)."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import TYPE_CHECKING

from recsys_export.errors import ConfigError

if TYPE_CHECKING:
    from recsys_export.serve.config import ServeConfig

#: The serve extra's modules: without them ``serve`` names the extra.
SERVE_EXTRA_MODULES = frozenset({"starlette", "uvicorn", "prometheus_client", "httptools"})


def _config(args: argparse.Namespace) -> ServeConfig:
    from recsys_export.serve.config import ServeConfig, read_token

    return ServeConfig(
        bundle=args.bundle,
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        max_batch=args.max_batch,
        max_delay_us=args.max_delay_us,
        max_queue=args.max_queue,
        concurrency=args.concurrency,
        deadline_ms=args.deadline_ms,
        max_body_bytes=args.max_body_bytes,
        max_users=args.max_users,
        watch_interval_s=None if args.no_watch else args.watch_interval,
        threads=args.threads,
        token=read_token(args.token_file) if args.token_file else None,
        insecure=args.insecure,
    ).check()


def cmd_serve(args: argparse.Namespace) -> int:
    """``recsys-export serve BUNDLE``: serve until Ctrl-C / SIGTERM."""
    try:
        config = _config(args)
        if args.ray:
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
    serve_forever(config, log_level=args.log_level, access_log=args.access_log)
    return 0


def _serve_ray(args: argparse.Namespace, config: ServeConfig) -> int:
    from ray import serve

    from recsys_export.serve.ray_app import start_on_ray

    url = start_on_ray(config, replicas=args.replicas, address=args.address)
    print(f"serving {config.name} on {url} with {args.replicas} Ray Serve replica(s)", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
