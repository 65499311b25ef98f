"""One owner for each default that several layers share (torch-free).

The model kinds, the export formats and precisions, the engines, the sizes and budgets a
command line leaves to the library: each is defined here once and imported where it is
used (the CLI's help texts included), so that no layer repeats a literal of another. The
command line's options default to None; the library resolves None to these values
(``resolve_*`` below, or a signature's default that names the constant).
"""

from __future__ import annotations

from collections.abc import Sequence

from recsys_export.core.topk import check_k
from recsys_export.errors import ConfigError

__all__ = [
    "DEFAULT_DUPLICATES",
    "DEFAULT_ENGINE",
    "DEFAULT_FORMATS",
    "DEFAULT_K",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_PRECISION",
    "DEFAULT_PROVIDERS",
    "DUPLICATE_POLICIES",
    "ENGINES",
    "FIXED_TOLERANCE",
    "FORMATS",
    "GENERIC_KIND",
    "MODEL_KINDS",
    "PARITY_BUDGET",
    "PRECISIONS",
    "resolve_formats",
    "resolve_k",
]

#: The model kinds recsys-export trains and exports (the first is the default).
MODEL_KINDS = ("mf", "densenet")
#: The kind of a module trained elsewhere and exported pair by pair (``recsys_export.byom``).
GENERIC_KIND = "generic"

#: Every export format, in the order they are written and listed.
FORMATS = ("onnx", "torchscript", "pt2")
#: The formats an export writes when none are named: ONNX (the torch-free runtime) and
#: TorchScript (libtorch). ``pt2`` (torch.export) is opt-in (``--formats all``): it adds
#: several seconds per export, mostly importing ``torch._dynamo`` to write the programs
#: and again for parity to load them back (docs/performance.md).
DEFAULT_FORMATS = ("onnx", "torchscript")

#: Precisions of ``export --precision``: ``fp32`` is the exact bundle; ``fp16`` and
#: ``int8`` add an approximate variant, loaded only when asked for.
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PRECISION = PRECISIONS[0]

#: The tolerance of parity's fixed rule ``atol + rtol * |ref|`` for the one of ``atol``,
#: ``rtol`` not given (neither given: the float32 error bound, no fixed rule).
FIXED_TOLERANCE = 1e-5
#: (user, item) pairs the parity plan compares per format.
PARITY_BUDGET = 16_000_000

#: Top-k list length when none is asked for (at most the number of items).
DEFAULT_K = 10
#: Memory budget of one block of users when scoring every user (MiB).
DEFAULT_MEMORY_MB = 256
#: onnxruntime execution providers when none are named.
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
#: Engines of ``score --all``: the onnxruntime runtime, Ray workers, the torch program.
ENGINES = ("local", "ray", "torch")
DEFAULT_ENGINE = ENGINES[0]

#: What a ratings file's duplicate (user, item) rows become (the first is the default).
DUPLICATE_POLICIES = ("last", "first", "mean", "error")
DEFAULT_DUPLICATES = DUPLICATE_POLICIES[0]


def resolve_k(k: int | None, n_items: int) -> int:
    """``k`` checked against ``n_items``; None: :data:`DEFAULT_K`, or every item when
    there are fewer.

    Raises
    ------
    ConfigError
        ``k`` outside ``1..n_items``.
    """
    if k is None:
        return min(DEFAULT_K, n_items)
    return check_k(k, n_items)


def resolve_formats(formats: str | Sequence[str] | None) -> list[str]:
    """Validate a format list.

    Parameters
    ----------
    formats : str or sequence of str or None
        ``"onnx,torchscript,pt2"`` or a sequence of names; ``all`` stands for every
        format (:data:`FORMATS`); None gives :data:`DEFAULT_FORMATS` (``pt2`` is opt-in).

    Returns
    -------
    list of str
        The formats named, in :data:`FORMATS` order.

    Raises
    ------
    ConfigError
        An unknown name, or an empty list.
    """
    if formats is None:
        return list(DEFAULT_FORMATS)
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    items = [f for f in items if f]
    if "all" in items:
        items = [f for f in items if f != "all"] + list(FORMATS)
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ConfigError(
            f"unknown export format(s) {unknown or items}; choose from "
            f"{', '.join(FORMATS)} or all (every format)"
        )
    return [f for f in FORMATS if f in items]
