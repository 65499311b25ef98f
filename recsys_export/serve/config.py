"""The server's settings, checked once, and the bind rule (loopback, or a token).

:class:`ServeConfig` holds every knob of ``recsys-export serve``; :meth:`ServeConfig.check`
validates them with the project's one-line :class:`~recsys_export.errors.ConfigError`.
:func:`is_loopback` and :func:`read_token` implement the security rule: the server binds
loopback by default, and a non-loopback bind needs a bearer token file or an explicit
``insecure``. Standard library only.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from recsys_export.core.validation import check_int, check_positive
from recsys_export.errors import ConfigError

__all__ = ["DEFAULTS", "ServeConfig", "is_loopback", "read_token"]


@dataclass
class ServeConfig:
    """Settings of one server (see ``recsys-export serve --help`` and docs/serving.md).

    Attributes
    ----------
    bundle : Path
        The bundle directory served and watched.
    host, port : str, int
        Where uvicorn binds (``port`` 0: an ephemeral port).
    model_name : str or None
        The model's name on the Open Inference Protocol routes (default: the bundle
        directory's name).
    max_batch : int
        Most users coalesced into one engine call.
    max_delay_us : int
        Longest a request waits for others to join its batch (microseconds).
    max_queue : int
        Most requests waiting for a batch; past it ``503`` with ``Retry-After``.
    concurrency : int
        Engine calls in flight at once (each on its own thread).
    deadline_ms : int
        A request not answered within it gets ``503`` (a client may ask for less with
        the ``X-Deadline-Ms`` header).
    max_body_bytes : int
        Largest request body (``413`` past it).
    max_users : int
        Most users (or pairs) in one request.
    watch_interval_s : float or None
        How often the bundle path is checked for a new bundle (None: not watched).
    threads : int or None
        onnxruntime intra-op threads per engine call (default: the cores left by the
        workers' event loops, shared by the calls in flight, at least 1).
    workers : int
        Server processes sharing the listening socket, each with its own event loop,
        batcher and engine threads (``--workers``).
    token : str or None
        The bearer token every route but the health probes requires.
    insecure : bool
        Allow a non-loopback bind without a token.
    """

    bundle: Path
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    max_batch: int = 64
    max_delay_us: int = 0
    max_queue: int = 1024
    concurrency: int = 2
    deadline_ms: int = 2000
    max_body_bytes: int = 1 << 20
    max_users: int = 1024
    watch_interval_s: float | None = 1.0
    threads: int | None = None
    workers: int = 1
    token: str | None = None
    insecure: bool = False

    def check(self) -> ServeConfig:
        """Validate every field (ConfigError naming the option); return ``self``."""
        check_int("--port", self.port, low=0, high=65535)
        check_int("--max-batch", self.max_batch, low=1)
        check_int("--max-delay-us", self.max_delay_us, low=0, high=10_000_000)
        check_int("--max-queue", self.max_queue, low=1)
        check_int("--concurrency", self.concurrency, low=0, high=64)
        check_int("--deadline-ms", self.deadline_ms, low=1)
        check_int("--max-body-bytes", self.max_body_bytes, low=1024)
        check_int("--max-users", self.max_users, low=1)
        check_int("--threads", self.threads, low=1, none_ok=True)
        check_int("--workers", self.workers, low=1, high=64)
        if self.watch_interval_s is not None:
            check_positive("--watch-interval", self.watch_interval_s)
        if self.token is not None and not self.token:
            raise ConfigError("the bearer token is empty; put a token in --token-file")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise ConfigError(
                f"--host {self.host} is not a loopback address: anyone who can reach it could "
                "use the model; pass --token-file FILE (clients send 'Authorization: Bearer "
                "TOKEN') or --insecure to serve it without authentication"
            )
        return self

    @property
    def name(self) -> str:
        """The model's name on the Open Inference Protocol routes."""
        return self.model_name or Path(os.path.abspath(self.bundle)).name or "model"

    @property
    def engine_threads(self) -> int:
        """onnxruntime intra-op threads of each session: by default one core is left to
        each worker's event loop (HTTP) and the rest shared by the engine calls in flight."""
        cores = (os.cpu_count() or 1) - self.workers
        return self.threads or max(1, cores // (self.workers * max(1, self.concurrency)))


#: The defaults, for docs and the benchmark.
DEFAULTS = ServeConfig(bundle=Path("."))


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def read_token(path: str | os.PathLike[str]) -> str:
    """The bearer token in ``path`` (surrounding whitespace removed).

    Raises
    ------
    ConfigError
        The file cannot be read, or holds no token.
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --token-file {path}: {exc}") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(
            f"--token-file {path} must hold one token (no spaces), e.g. the output of "
            "'python -c \"import secrets; print(secrets.token_urlsafe(32))\"'"
        )
    return token
