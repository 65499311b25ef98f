"""The bundle's manifest schema, torch-free: every manifest field typed in one place.

* :mod:`.contract`: the format's constants (name, version, file names), the entry
  points every format exposes, the kernel and precision constants;
* :mod:`.formats`: ``formats`` (ONNX graphs, fast-path kernels, approximate variants,
  TorchScript, ``.pt2``);
* :mod:`.records`: ``model``, ``entry_points``, ``seen``, ``versions``, ``training``,
  ``timings``, ``parity`` (and its plan);
* :mod:`.manifest`: :class:`Manifest`, parsed by every reader
  (:meth:`~recsys_export.bundle.Bundle.load`) and built by the exporter.

Only this package reads manifest keys (``tests/test_architecture.py`` checks it).
"""

from recsys_export.bundle.schema.contract import (
    DEFAULT_FORMATS,
    DN_BLOCK_USERS,
    ENTRY_POINTS,
    FORMAT_NAME,
    FORMAT_VERSION,
    FORMATS,
    ID_MAP_FILES,
    ID_MAP_NAMES,
    ITEM_NAMES_FILE,
    KERNEL_NAMES,
    KERNELS_DIR,
    KERNELS_FALLBACK,
    KERNELS_READ,
    KERNELS_VERSION,
    MANIFEST_NAME,
    OPTIONAL_KERNELS,
    PRECISIONS,
    RESERVED_KEYS,
    VARIANTS_DIR,
    check_precision,
    entry_point_spec,
    parse_precisions,
)
from recsys_export.bundle.schema.formats import (
    Formats,
    KernelsFallback,
    KernelsSection,
    OnnxSection,
    Pt2Section,
    TorchScriptSection,
    VariantSection,
)
from recsys_export.bundle.schema.manifest import FileEntry, Manifest
from recsys_export.bundle.schema.records import (
    EntryPoint,
    ModelSection,
    ParityRow,
    ParitySummary,
    Port,
    SeenSection,
    Timings,
    TrainingSection,
    Versions,
    describe_plan,
)

__all__ = [
    "DEFAULT_FORMATS",
    "DN_BLOCK_USERS",
    "ENTRY_POINTS",
    "FORMATS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ID_MAP_FILES",
    "ID_MAP_NAMES",
    "ITEM_NAMES_FILE",
    "KERNELS_DIR",
    "KERNELS_FALLBACK",
    "KERNELS_READ",
    "KERNELS_VERSION",
    "KERNEL_NAMES",
    "MANIFEST_NAME",
    "OPTIONAL_KERNELS",
    "PRECISIONS",
    "RESERVED_KEYS",
    "VARIANTS_DIR",
    "EntryPoint",
    "FileEntry",
    "Formats",
    "KernelsFallback",
    "KernelsSection",
    "Manifest",
    "ModelSection",
    "OnnxSection",
    "ParityRow",
    "ParitySummary",
    "Port",
    "Pt2Section",
    "SeenSection",
    "Timings",
    "TorchScriptSection",
    "TrainingSection",
    "VariantSection",
    "Versions",
    "check_precision",
    "describe_plan",
    "entry_point_spec",
    "parse_precisions",
]
