"""Exporting a model: frozen modules, format writers, fast-path kernels, the bundle.

Modules (each imports only those before it; :mod:`recsys_export.parity` imports the
writers' helpers and is imported back only lazily, by :func:`export_bundle`, to verify):

* :mod:`.frozen`: the export-friendly inference modules every format is made from.
* :mod:`.formats`: TorchScript, ``.pt2`` and ONNX writers (``quiet_exporters`` too).
* :mod:`.kernels`: the optional ONNX fast-path graphs for the runtime.
* :mod:`.precision`: the approximate (fp16, int8) variants.
* :mod:`.build`: :func:`export_bundle`, the manifest and the bundle's other files.
* :mod:`.options`: :class:`ExportOptions`, ``export_bundle``'s options as one value.

The names below stay importable from ``recsys_export.export`` as before the split; they
are loaded on first use, so importing one submodule (as parity does) loads no other.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_NAMES = {
    "build": (
        "REFERENCE_FILE",
        "build_manifest",
        "export_bundle",
        "parse_formats",
    ),
    "formats": (
        "ONNX_IR_VERSION",
        "ONNX_OPSET",
        "ONNX_SINGLE_FILE_LIMIT",
        "TRACED_ONNX_KINDS",
        "OnnxSource",
        "export_programs",
        "onnx_sources",
        "write_onnx",
        "write_pt2",
        "write_torchscript",
    ),
    "kernels": (
        "DN_BLOCK_USERS",
        "DN_MAX_TILES",
        "DN_TILE_BYTES",
        "KERNELS_DIR",
        "KERNELS_VERSION",
        "dn_item_tiles",
        "build_kernels",
        "dn_tile_width",
        "write_kernels",
    ),
    "frozen": ("InferenceSource", "inference_module"),
    "options": ("ExportOptions",),
}
_WHERE = {name: mod for mod, names in _NAMES.items() for name in names}

__all__ = sorted(n for n in _WHERE if not n.startswith("_"))


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
