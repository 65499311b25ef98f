"""onnxruntime sessions of a loaded bundle: options, providers, the graph that was
checked, failures as one line.

:class:`Sessions` creates each graph's session once (lazily, under a lock) and shares
it; :func:`check_providers` validates execution providers. :func:`open_session` creates
a session of the graph file :meth:`Bundle.load` opened and checksummed: by path while
the path still leads to it, else from its bytes (a bundle replaced on disk since still
runs whole, as loaded). The session (:class:`BundleSession`) turns onnxruntime's
failures at run time (a graph whose inputs do not match its entry point, in a tampered
and re-signed bundle) into a :class:`~recsys_export.errors.BundleError` naming the graph;
a graph onnxruntime refuses to load is one such line naming the fix. Also the bound of
the runtime's thread counts (:func:`max_threads`).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import onnxruntime as ort

from recsys_export.bundle import Bundle
from recsys_export.errors import BundleError, ConfigError, RecsysExportError

__all__ = [
    "DEFAULT_PROVIDERS",
    "OPT_LEVELS",
    "THREADS_PER_CORE",
    "BundleSession",
    "Sessions",
    "check_providers",
    "max_threads",
    "open_session",
]

OPT_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
#: The execution providers of every session unless ``providers`` says otherwise.
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def check_providers(providers: Any) -> list[str]:
    """Validate onnxruntime execution providers (None: :data:`DEFAULT_PROVIDERS`).

    Parameters
    ----------
    providers : sequence of str, or None
        Names such as ``"CUDAExecutionProvider"``, in priority order; onnxruntime falls
        back along the list for operators a provider lacks.

    Returns
    -------
    list of str

    Raises
    ------
    ConfigError
        An empty list, a non-string, or a provider this onnxruntime does not have (the
        message lists ``onnxruntime.get_available_providers()``).
    """
    if providers is None:
        return list(DEFAULT_PROVIDERS)
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    names = list(providers)
    available = ort.get_available_providers()
    if not names or not all(isinstance(p, str) for p in names):
        raise ConfigError(
            f"providers must be a non-empty list of provider names, got {providers!r}; "
            f"this onnxruntime has {', '.join(available)}"
        )
    unknown = [p for p in names if p not in available]
    if unknown:
        raise ConfigError(
            f"unknown onnxruntime execution provider(s) {', '.join(unknown)}; this "
            f"onnxruntime {ort.__version__} has {', '.join(available)} (the GPU ones need "
            "the onnxruntime-gpu package)"
        )
    return names


class Sessions:
    """onnxruntime sessions of one bundle, created once (lazily, under a lock), shared.

    Parameters
    ----------
    bundle : Bundle
        The loaded bundle (for paths and error messages).
    threads : int
        Default intra-op threads of a session.
    graph_optimization : str
        A key of :data:`OPT_LEVELS`.
    providers : list of str, optional
        onnxruntime execution providers of every session (default
        :data:`DEFAULT_PROVIDERS`); validate them with :func:`check_providers`.
    """

    def __init__(
        self,
        bundle: Bundle,
        threads: int,
        graph_optimization: str,
        providers: list[str] | None = None,
    ) -> None:
        self.bundle = bundle
        self.threads = threads
        self.providers = list(providers or DEFAULT_PROVIDERS)
        self._opt = OPT_LEVELS[graph_optimization]
        self._lock = threading.Lock()
        self._sessions: dict[str, ort.InferenceSession] = {}

    def get(self, name: str, rel: str, threads: int | None = None) -> ort.InferenceSession:
        """The session called ``name`` of the bundle file ``rel`` (created on first use).

        Raises
        ------
        BundleError
            onnxruntime cannot load the graph (too old an onnxruntime, or a bad file).
        """
        sess = self._sessions.get(name)
        if sess is not None:
            return sess
        with self._lock:
            sess = self._sessions.get(name)
            if sess is None:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads or self.threads
                opts.inter_op_num_threads = 1
                opts.graph_optimization_level = self._opt
                opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                if name.startswith(("kernel:topk", "kernel:score_all")):
                    # recommend alternates these two: a pool spinning after its call
                    # takes the cores from the other (measured 1.5x slower recommend)
                    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                sess = open_session(self.bundle, name, rel, opts, self.providers)
                self._sessions[name] = sess
        return sess


#: onnxruntime's errors for a graph newer than it reads (IR version or opset).
_TOO_NEW = re.compile(r"IR version|opset", re.IGNORECASE)
#: The most threads per core ``intra_op_threads`` (``--threads``) may ask for.
THREADS_PER_CORE = 4


def max_threads() -> int:
    """The most threads a recommender may use: :data:`THREADS_PER_CORE` x the cores.

    More only adds start-up time and memory: ``--threads 100000`` once spent minutes
    creating threads (16 GB) in onnxruntime, where no signal is handled.
    """
    return THREADS_PER_CORE * (os.cpu_count() or 1)


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class BundleSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` of one bundle graph whose run failures are
    :class:`BundleError` lines naming the graph and the bundle."""

    def __init__(self, source: str | bytes, what: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(source, *args, **kwargs)
        self._what = what

    def _checked(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (RecsysExportError, MemoryError):
            raise
        except Exception as exc:
            raise BundleError(
                f"onnxruntime cannot run {self._what} ({_detail(exc)}); its inputs or "
                "outputs do not match the bundle's entry points (an edited bundle?): "
                "export it again"
            ) from None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """``InferenceSession.run``; onnxruntime's failures as :class:`BundleError`."""
        return self._checked(super().run, *args, **kwargs)

    def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
        """``InferenceSession.run_with_iobinding``; failures as :class:`BundleError`."""
        return self._checked(super().run_with_iobinding, *args, **kwargs)


def open_session(
    bundle: Bundle, name: str, rel: str, opts: ort.SessionOptions, providers: list[str]
) -> BundleSession:
    """The session of the bundle graph ``rel`` (called ``name`` in messages).

    onnxruntime reads the graph from its path while that is the file the bundle opened
    when it was loaded (checked before and after: a loaded bundle holds its files open,
    so an inode cannot be reused meanwhile); once ``export --force`` has replaced the
    bundle, from the bytes of the file that was loaded.

    Raises
    ------
    BundleError
        onnxruntime cannot load the graph (too old an onnxruntime, or a bad file), or
        a graph with external weights was replaced on disk since the bundle was loaded.
    """
    names = [rel] + [f"{rel}.data"] * (f"{rel}.data" in bundle.files)
    what = f"the {name} graph of bundle {bundle.root}"

    def current() -> bool:
        return all(bundle.is_loaded_file(n) for n in names)

    if current():
        sess = _create(bundle, name, str(bundle.file(rel)), what, opts, providers)
        if current():
            return sess
    if len(names) > 1:  # onnxruntime finds external weights beside the graph's path only
        raise BundleError(
            f"bundle {bundle.root} was replaced since it was loaded, and its {name} graph "
            "keeps its weights in a separate file that is read by path: load it again"
        )
    return _create(bundle, name, bundle.read_bytes(rel), what, opts, providers)


def _create(
    bundle: Bundle,
    name: str,
    source: str | bytes,
    what: str,
    opts: ort.SessionOptions,
    providers: list[str],
) -> BundleSession:
    try:
        return BundleSession(source, what, opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        detail = _detail(exc)
        where = f"bundle {bundle.root}"
        if _TOO_NEW.search(detail):
            written = bundle.spec.versions.get("onnxruntime", "unknown")
            raise BundleError(
                f"{where}: the installed onnxruntime {ort.__version__} is too old for the "
                f"{name} graph ({detail}); the bundle was verified with onnxruntime "
                f"{written}: upgrade onnxruntime (pip install -U onnxruntime)"
            ) from None
        raise BundleError(
            f"{where}: onnxruntime cannot load the {name} graph ({detail}); export the bundle again"
        ) from None
