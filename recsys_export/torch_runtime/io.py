"""Reading and writing torch files: exported programs, TorchScript modules, weights.

One place for what export, parity and the torch engine share, so that ``export ->
parity`` runs one way: :func:`quiet_exporters` (the exporters' prints and warnings
silenced), :func:`load_exported_module` (a ``.pt2`` program on a device),
:func:`load_torchscript` (a TorchScript module on a device), :func:`load_weights_only`
(``torch.load(weights_only=True)`` with one-line errors) and
:func:`check_finite_weights`. Imports torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from recsys_export.errors import CheckpointError


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines.

    ``torch.onnx.export(dynamo=True)`` prints progress to stdout and logs warnings;
    TorchScript emits DeprecationWarnings. None of that belongs in our users' output.
    """
    loggers = [
        logging.getLogger(n)
        for n in (
            "torch.onnx",
            "torch.export",
            "torch._export",
            "onnxscript",
            "torch._dynamo",
            "torch.fx",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_exported_module(path: Path, device: torch.device | None) -> Callable[..., Any]:
    """``torch.export.load(path).module()``, moved to ``device`` when one is given.

    The move is torch's ``move_to_device_pass`` (weights, constants and the device
    arguments recorded in the graph); a torch without it moves the module's weights.
    Used by the torch engine and by parity's ``.pt2`` backend.
    """
    program = torch.export.load(str(path))
    if device is None:
        return program.module()  # type: ignore[no-any-return]
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:  # an older torch: weights and buffers only
        return program.module().to(device)  # type: ignore[no-any-return]
    return move_to_device_pass(program, device).module()  # type: ignore[no-any-return]


def load_torchscript(path: Path, device: torch.device | str | None = None) -> Any:
    """``torch.jit.load`` of a TorchScript module onto ``device`` (default CPU), in eval
    mode, the loader's warnings silenced. Used by the torch engine and parity."""
    with quiet_exporters():
        module = torch.jit.load(str(path), map_location=device or "cpu")
    module.eval()
    return module


def load_weights_only(
    path: Path, *, refusal: str, unreadable: str, missing: str | None = None
) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, failures as one-line errors.

    Parameters
    ----------
    missing : str, optional
        The message when ``path`` is not a file (default: torch's own error, as
        ``unreadable``).
    refusal : str
        Advice after "refusing to load PATH: it holds objects that are not plain weights".
    unreadable : str
        What the file is not, after "PATH is not a readable " (torch's detail follows).

    Raises
    ------
    CheckpointError
        A missing file (with ``missing``), a pickle that tries to run code, or a file
        torch cannot read.
    """
    if missing is not None and not Path(path).is_file():
        raise CheckpointError(missing)
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": would add lines to the CLI's one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects that are not plain weights "
            f"({_unpickling_detail(exc)}); {refusal}"
        ) from None
    except Exception as exc:  # any other failure: not a readable torch file
        # torch's own messages for such files are cryptic ("101", "[Errno 22] Invalid
        # argument"): say what is wrong first, keep torch's detail in parentheses
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable {unreadable} ({detail[:200]})") from None


def _unpickling_detail(exc: Exception) -> str:
    """The informative part of torch's weights-only error, without its boilerplate."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds a sentence with ANSI codes
    found = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    if found:
        detail = found.group(1)
    else:
        boilerplate = (
            "Weights only load failed",
            "Please file an issue",
            "Check the documentation",
            "(1)",
            "(2)",
        )
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        useful = [ln for ln in lines if not ln.startswith(boilerplate)]
        detail = useful[0] if useful else "unsafe content"
    return detail.split(". Please")[0].strip()[:160]


def check_finite_weights(state: Mapping[str, Any], where: str, hint: str = "") -> None:
    """Refuse weights holding NaN or infinite values.

    Parameters
    ----------
    state : Mapping
        A state dict (name -> tensor; other values are skipped).
    where : str
        The message's prefix (a path, ``"refusing to export"``, ...).
    hint : str
        Appended to the message (what to do).

    Raises
    ------
    CheckpointError
        Naming the first floating-point tensor that is not finite.
    """
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"{where}: weight {name} holds NaN or infinite values{hint}")
