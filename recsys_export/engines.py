"""One factory for the engines that score a bundle: :func:`open_engine`.

It owns which engine runs and which options each accepts (as implicit's factory picks a
CPU or a GPU class), so the CLI, the Ray job (:mod:`recsys_export.scale`), parity, the
benchmark and the server ask here instead of re-checking options of their own:

=============  =====================  ==========================  =========================
option         ``onnx``               ``torch``                   ``ray`` (a job of workers)
=============  =====================  ==========================  =========================
``device``     None or ``cpu``        ``cpu`` / ``cuda[:N]``      None: onnx workers;
                                                                  ``cpu``/``cuda``: torch
``providers``  onnxruntime providers  refused                     onnx workers only
``threads``    intra-op threads       ``torch.set_num_threads``   threads per worker
``precision``  fp32, fp16, int8       fp32 only                   fp32 only
=============  =====================  ==========================  =========================

Every engine implements :class:`~recsys_export.runtime.protocol.Engine`; the batch
writers (:mod:`recsys_export.runtime.writers`) take any of them. ``ray`` is not an
in-process engine: :func:`recsys_export.scale.score_topk_ray` checks its options here
(:meth:`EngineOptions.checked`) and every worker opens its engine with
:meth:`EngineOptions.for_workers`. Torch is imported only for ``engine="torch"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, overload

from recsys_export.bundle import Bundle
from recsys_export.core import defaults
from recsys_export.core.validation import check_choice, check_int
from recsys_export.errors import ConfigError
from recsys_export.runtime.protocol import Engine
from recsys_export.runtime.sessions import max_threads

if TYPE_CHECKING:
    from recsys_export.runtime import Recommender

__all__ = ["ENGINES", "EngineOptions", "open_engine"]

#: The CLI's ``--engine local`` is the onnxruntime engine, ``onnx`` here.
_ALIASES = {"local": "onnx"}
#: The engines, by name (:data:`recsys_export.core.defaults.ENGINES`, ``local`` as ``onnx``).
ENGINES = tuple(_ALIASES.get(e, e) for e in defaults.ENGINES)


@dataclass(frozen=True)
class EngineOptions:
    """Which engine runs a bundle, and its options (see the module's table).

    Attributes
    ----------
    engine : {"onnx", "torch", "ray"}, optional
        ``"local"`` is accepted for ``"onnx"``; None: the default engine (``onnx``).
    device : str, optional
        ``cpu``/``cuda[:N]`` for ``torch``; ``cpu``/``cuda`` for ``ray``'s torch workers.
    providers : list of str, optional
        onnxruntime execution providers (``onnx``, and ``ray`` without ``device``).
    threads : int, optional
        Threads per engine (per worker for ``ray``).
    precision : {"fp32", "fp16", "int8"}, optional
        An approximate variant of the bundle (``onnx`` only; None: ``fp32``).
    """

    engine: str | None = None
    device: str | None = None
    providers: list[str] | None = None
    threads: int | None = None
    precision: str | None = None

    def checked(self) -> EngineOptions:
        """These options with ``engine`` normalised, or the :class:`ConfigError` that
        names the flag that does not go with the engine."""
        name = defaults.DEFAULT_ENGINE if self.engine is None else self.engine
        engine = _ALIASES.get(str(name), name)
        check_choice("engine", engine, ENGINES)
        precision = defaults.DEFAULT_PRECISION if self.precision is None else self.precision
        device = None if self.device is None else str(self.device).strip().lower()
        shown = "local" if engine == "onnx" else engine
        # (refused, why): the option matrix of the module's table
        rules = (
            (
                precision != defaults.DEFAULT_PRECISION and engine != "onnx",
                f"--precision {precision} runs with the local runtime (--engine local); "
                f"--engine {shown} runs the exact model",
            ),
            (
                engine == "onnx" and device not in (None, "cpu"),
                "--device needs --engine torch or ray (the local runtime runs on CPU)",
            ),
            (
                engine == "torch" and self.providers is not None,
                "--providers is for the onnxruntime engines (--engine local or ray), not "
                "--engine torch, which runs the bundle's torch program on --device",
            ),
            (
                engine == "ray" and device not in (None, "cpu", "cuda"),
                f"unsupported device {device!r} for the ray engine: use cpu or cuda (Ray "
                "gives each worker its own GPU, which it sees as cuda:0)",
            ),
            (
                engine == "ray" and device is not None and self.providers is not None,
                f"providers are for the onnxruntime workers, but device={device!r} runs the "
                "torch engine on the workers: drop --providers, or --device to use onnxruntime",
            ),
        )
        for refused, why in rules:
            if refused:
                raise ConfigError(why)
        if engine == "onnx":
            device = None
        return replace(self, engine=engine, device=device, precision=precision)

    def for_workers(self) -> EngineOptions:
        """The in-process engine each worker of a ``ray`` job opens (torch with a device)."""
        checked = self.checked()
        if checked.engine != "ray":
            return checked
        return replace(checked, engine="onnx" if checked.device is None else "torch")


@overload
def open_engine(
    bundle: str | os.PathLike[str] | Bundle,
    *,
    engine: Literal["onnx", "local"] | None = ...,
    device: str | None = ...,
    providers: list[str] | None = ...,
    threads: int | None = ...,
    precision: str | None = ...,
    verify: bool = ...,
    **engine_options: Any,
) -> Recommender: ...


@overload
def open_engine(
    bundle: str | os.PathLike[str] | Bundle,
    *,
    engine: str,
    device: str | None = ...,
    providers: list[str] | None = ...,
    threads: int | None = ...,
    precision: str | None = ...,
    verify: bool = ...,
    **engine_options: Any,
) -> Engine: ...


def open_engine(
    bundle: str | os.PathLike[str] | Bundle,
    *,
    engine: str | None = None,
    device: str | None = None,
    providers: list[str] | None = None,
    threads: int | None = None,
    precision: str | None = None,
    verify: bool = True,
    **engine_options: Any,
) -> Engine:
    """Open ``bundle`` with the engine that ``engine`` names.

    Parameters
    ----------
    bundle : path or Bundle
        A bundle directory (checksums verified unless ``verify=False``), or a loaded
        :class:`~recsys_export.bundle.Bundle`.
    engine : {"onnx", "torch"}, optional
        None or ``onnx`` (alias ``local``): :class:`~recsys_export.runtime.Recommender`, torch-free
        (its raw-id ``recommend``/``score`` too); ``torch``:
        :class:`~recsys_export.torch_runtime.engine.TorchEngine`.
    device, providers, threads, precision
        See :class:`EngineOptions`.
    verify : bool
        Check every file's sha256 (sizes and names are always checked).
    **engine_options
        The engine's own options: ``fast_paths``, ``python_threads``, ``block_users``,
        ``call_users``, ``graph_optimization`` for ``onnx``; ``prefer`` for ``torch``.

    Returns
    -------
    Engine
        Loaded and probed: a graph or program that cannot run fails here.

    Raises
    ------
    ConfigError
        An option that does not go with ``engine`` (the message names the flag),
        ``engine="ray"`` (a job: :func:`recsys_export.scale.score_topk_ray`), or torch
        missing for ``engine="torch"``.
    BundleError
        A missing, corrupted or incomplete bundle.
    """
    options = EngineOptions(engine, device, providers, threads, precision).checked()
    if options.engine == "ray":
        raise ConfigError(
            "the ray engine is a job over many workers, not an engine in this process: "
            "use recsys_export.scale.score_topk_ray (score --all --engine ray)"
        )
    if options.engine == "torch":
        from recsys_export.torch_runtime.engine import TorchEngine  # ConfigError without torch

        allowed = {"prefer"}
        _refuse_others(engine_options, allowed, "torch")
        threads = check_int("threads", threads, low=1, high=max_threads(), none_ok=True)
        if threads is not None and (options.device or "cpu") == "cpu":
            import torch

            torch.set_num_threads(threads)
        path = bundle.root if isinstance(bundle, Bundle) else bundle
        return TorchEngine.load(
            path, device=options.device or "cpu", verify=verify, **engine_options
        )
    from recsys_export.runtime import Recommender

    _refuse_others(
        engine_options,
        {"fast_paths", "python_threads", "block_users", "call_users", "graph_optimization"},
        "onnx",
    )
    return Recommender.load(
        bundle,
        verify=verify,
        intra_op_threads=threads,
        providers=providers,
        precision=options.precision or defaults.DEFAULT_PRECISION,
        **engine_options,
    )


def _refuse_others(given: dict[str, Any], allowed: set[str], engine: str) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise ConfigError(
            f"option(s) {', '.join(extra)} do not apply to the {engine} engine; "
            f"it takes {', '.join(sorted(allowed))}"
        )
