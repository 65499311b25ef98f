"""The documented import path of the torch engine (docs/scaling.md): re-exports
:class:`~recsys_export.torch_runtime.engine.TorchEngine` and
:func:`~recsys_export.torch_runtime.device.resolve_device`."""

from recsys_export.torch_runtime.device import resolve_device
from recsys_export.torch_runtime.engine import TorchEngine

__all__ = ["TorchEngine", "resolve_device"]
