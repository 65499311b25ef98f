"""onnxruntime sessions of a bundle: options, execution providers, load errors.

:class:`Sessions` creates each graph's session once (lazily, under a lock) and shares
it; :func:`check_providers` validates execution providers; a graph onnxruntime refuses
becomes one :class:`~recsys_export.errors.BundleError` naming the fix.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import onnxruntime as ort

from recsys_export.bundle import Bundle
from recsys_export.errors import BundleError, ConfigError

__all__ = ["DEFAULT_PROVIDERS", "OPT_LEVELS", "Sessions", "check_providers"]

OPT_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
#: onnxruntime's errors for a graph newer than it reads (IR version or opset).
_TOO_NEW = re.compile(r"IR version|opset", re.IGNORECASE)
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
                try:
                    sess = ort.InferenceSession(
                        str(self.bundle.file(rel)), opts, providers=self.providers
                    )
                except Exception as exc:  # onnxruntime raises its own exception types
                    raise self._load_error(name, exc) from None
                self._sessions[name] = sess
        return sess

    def _load_error(self, name: str, exc: Exception) -> BundleError:
        detail = " ".join(str(exc).split())
        where = f"bundle {self.bundle.root}"
        if _TOO_NEW.search(detail):
            written = self.bundle.spec.versions.get("onnxruntime", "unknown")
            return BundleError(
                f"{where}: the installed onnxruntime {ort.__version__} is too old for the "
                f"{name} graph ({detail}); the bundle was verified with onnxruntime "
                f"{written}: upgrade onnxruntime (pip install -U onnxruntime)"
            )
        return BundleError(
            f"{where}: onnxruntime cannot load the {name} graph ({detail}); export the bundle again"
        )
