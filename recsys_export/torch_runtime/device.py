"""The torch device a bundle's programs run on: :func:`resolve_device` (``cpu`` or
``cuda[:N]``, checked to be usable). Imports torch."""

from __future__ import annotations

import torch

from recsys_export.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` for ``"cpu"`` or ``"cuda[:N]"``, checked to be usable.

    Raises
    ------
    ConfigError
        Another device type, CUDA without a CUDA build or a visible GPU, or an index
        past the visible GPUs.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use cpu or cuda[:N]") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"unsupported device {device!r}: use cpu or cuda[:N]")
    if not torch.cuda.is_available():
        why = (
            "this torch is a CPU-only build"
            if torch.version.cuda is None
            else "no CUDA GPU is visible"
        )
        raise ConfigError(
            f"device {str(device)!r} requested but CUDA is not available ({why}, torch "
            f"{torch.__version__}); use --device cpu"
        )
    count = torch.cuda.device_count()
    index = 0 if dev.index is None else dev.index
    if index >= count:
        raise ConfigError(
            f"device {str(device)!r} requested but only {count} CUDA device(s) are visible"
        )
    return torch.device("cuda", index)
