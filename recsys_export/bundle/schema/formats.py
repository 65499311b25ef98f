"""The manifest's ``formats`` section, typed: the ONNX graphs with their fast-path
kernels and approximate variants, the TorchScript module and the ``.pt2`` programs.

Each section is a frozen dataclass: ``parse`` reads it from a manifest (what a reader
may use: kernels and variants whose files the manifest does not list, or of a version
this runtime does not read, are left out, never an error), ``to_dict`` writes it (the
exporter builds the sections and the manifest from them).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from recsys_export.bundle.schema.contract import (
    DN_BLOCK_USERS,
    ENTRY_POINTS,
    FORMATS,
    KERNEL_NAMES,
    KERNELS_FALLBACK,
    KERNELS_READ,
    OPTIONAL_KERNELS,
    PRECISIONS,
    at_least,
)

__all__ = [
    "Formats",
    "KernelsFallback",
    "KernelsSection",
    "OnnxSection",
    "Pt2Section",
    "TorchScriptSection",
    "VariantSection",
]


def _mapping_items(value: Any) -> list[tuple[Any, Any]]:
    return list(value.items()) if isinstance(value, Mapping) else []


def _listed_files(value: Any, listed: Collection[str]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {k: f for k, f in value.items() if isinstance(f, str) and f in listed}


def _group_shape(entry: Mapping[str, Any], files: dict[str, str]) -> tuple[int, int]:
    """``(groups, group_width)`` of a kernel or variant entry whose ``score_groups`` and
    ``group_max`` graphs are both in ``files``; else ``(0, 0)``, those graphs dropped."""
    groups, width = at_least(entry.get("groups"), 1), at_least(entry.get("group_width"), 1)
    if groups is not None and width is not None and {"score_groups", "group_max"} <= set(files):
        return groups, width
    files.pop("score_groups", None)
    files.pop("group_max", None)
    return 0, 0


@dataclass(frozen=True)
class KernelsSection:
    """The runtime's fast-path graphs (``formats.onnx.kernels``).

    Attributes
    ----------
    version : int
        Kernel version (:data:`~.contract.KERNELS_READ` lists what each kind reads).
    files : dict
        :data:`~.contract.KERNEL_NAMES` (and the :data:`~.contract.OPTIONAL_KERNELS`
        present) -> bundle-relative file name.
    block_users : int or None
        Users per DenseNet ``score_all`` kernel call (None: not recorded, MF).
    groups, group_width : int
        Item groups of the MF ``score_groups`` kernel and their width (0: none).
    """

    version: int
    files: Mapping[str, str]
    block_users: int | None = None
    groups: int = 0
    group_width: int = 0

    @property
    def call_users(self) -> int:
        """Users per ``score_all`` kernel call (:data:`~.contract.DN_BLOCK_USERS` when
        the manifest does not say)."""
        return self.block_users or DN_BLOCK_USERS

    @classmethod
    def parse(cls, entry: Any, kind: str, listed: Collection[str]) -> KernelsSection | None:
        """The usable kernels, or None: absent, a version ``kind`` does not read, a bad
        ``block_users``, or a kernel file the manifest does not list."""
        if not isinstance(entry, Mapping) or entry.get("version") not in KERNELS_READ.get(kind, ()):
            return None
        block_users = entry.get("block_users")
        if "block_users" in entry and at_least(block_users, 1) is None:
            return None  # recorded, but not a number of users: the graphs serve
        files = {}
        for name in KERNEL_NAMES:
            rel = entry.get(name)
            if not isinstance(rel, str) or rel not in listed:
                return None
            files[name] = rel
        files.update(
            {
                n: entry[n]
                for n in OPTIONAL_KERNELS
                if isinstance(entry.get(n), str) and entry[n] in listed
            }
        )
        groups, width = _group_shape(entry, files)
        return cls(int(entry["version"]), files, block_users, groups, width)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, **self.files}
        if self.block_users is not None:
            out["block_users"] = self.block_users
        if self.groups:
            out["groups"], out["group_width"] = self.groups, self.group_width
        return out


@dataclass(frozen=True)
class KernelsFallback:
    """Kernels an export verified and found failing (``formats.onnx.kernels_fallback``):
    the runtime serves the entry-point graphs instead; the files stay in the bundle."""

    reason: str
    kernels: Mapping[str, Any]

    @classmethod
    def parse(cls, entry: Any) -> KernelsFallback | None:
        if not isinstance(entry, Mapping):
            return None
        kernels = entry.get("kernels")
        return cls(
            str(entry.get("reason", "")), dict(kernels) if isinstance(kernels, Mapping) else {}
        )

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "kernels": dict(self.kernels)}


@dataclass(frozen=True)
class VariantSection:
    """An approximate variant (``formats.onnx.variants.<precision>``).

    Attributes
    ----------
    precision : str
        ``fp16`` or ``int8``.
    graphs : dict
        ``score`` and either ``score_all`` or (int8) ``score_all_partial`` (the scores
        without the user bias, which the runtime adds from ``arrays["user_bias"]``), and
        for int8 ``score_groups``/``group_max`` -> file.
    arrays : dict
        int8: ``users``, ``items`` (the float32 augmented factors of the exact re-rank)
        and ``user_bias`` -> ``.npy`` file.
    groups, group_width : int
        Item groups of ``score_groups`` and their width (0 without it).
    kernel_score_all : bool
        fp16: ``score_all`` is the tiled fast-path kernel (sized like the exact one).
    factor_bytes : dict or None
        int8: the factors' bytes per precision (``int8``, ``fp32``).
    compute : str or None
        fp16: how it computes.
    quality : dict or None
        The export's judgement (recall of the exact lists, score error); None when
        exported without verification.
    """

    precision: str
    graphs: Mapping[str, str]
    arrays: Mapping[str, str] = field(default_factory=dict)
    groups: int = 0
    group_width: int = 0
    kernel_score_all: bool | None = None
    factor_bytes: Mapping[str, int] | None = None
    compute: str | None = None
    quality: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, precision: str, spec: Any, listed: Collection[str]) -> VariantSection | None:
        """The variant, or None when its graphs are incomplete or not listed."""
        if precision not in PRECISIONS[1:] or not isinstance(spec, Mapping):
            return None
        graphs = _listed_files(spec.get("graphs"), listed)
        arrays = _listed_files(spec.get("arrays"), listed)
        partial = "score_all_partial" in graphs and "user_bias" in arrays
        if "score" not in graphs or not ("score_all" in graphs or partial):
            return None
        groups, width = _group_shape(spec, graphs)
        sizes, quality = spec.get("factor_bytes"), spec.get("quality")
        tiled = spec.get("kernel_score_all")
        compute = spec.get("compute")
        return cls(
            precision=precision,
            graphs=graphs,
            arrays=arrays,
            groups=groups,
            group_width=width,
            kernel_score_all=None if tiled is None else bool(tiled),
            factor_bytes=dict(sizes) if isinstance(sizes, Mapping) else None,
            compute=compute if isinstance(compute, str) else None,
            quality=dict(quality) if isinstance(quality, Mapping) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "graphs": dict(self.graphs)}
        if self.groups:
            out["groups"], out["group_width"] = self.groups, self.group_width
        if self.factor_bytes is not None:
            out["factor_bytes"] = dict(self.factor_bytes)
        if self.arrays:
            out["arrays"] = dict(self.arrays)
        if self.kernel_score_all is not None:
            out["kernel_score_all"] = self.kernel_score_all
        if self.compute is not None:
            out["compute"] = self.compute
        if self.quality is not None:
            out["quality"] = dict(self.quality)
        return out

    def describe(self) -> str:
        """One line: the judged quality and the factor bytes."""
        q = self.quality
        parts = []
        if q is not None:
            recall = ", ".join(
                f"recall@{k} {q[f'recall@{k}']:.4f}"
                for k in (10, 100)
                if q.get(f"recall@{k}") is not None
            )
            parts.append(
                f"{recall} of the exact lists ({q.get('users')} users), score error max "
                f"{q.get('score_abs_max', float('nan')):.2e}"
            )
        else:
            parts.append("not judged (exported with --no-verify)")
        sizes = self.factor_bytes
        if sizes and sizes.get("int8") and sizes.get("fp32"):
            parts.append(
                f"factors {sizes['int8'] / 1e6:.2f} MB int8 vs {sizes['fp32'] / 1e6:.2f} MB fp32 "
                f"({sizes['fp32'] / sizes['int8']:.2f}x smaller)"
            )
        return "; ".join(parts)


@dataclass(frozen=True)
class OnnxSection:
    """``formats.onnx``: the entry-point graphs, the fast paths, the variants.

    Attributes
    ----------
    graphs : dict
        Entry point -> ONNX file (all three of :data:`~.contract.ENTRY_POINTS` in a
        usable bundle; :meth:`require_graphs` checks).
    opset : int or None
    kernels : KernelsSection or None
        Usable fast-path graphs.
    kernels_fallback : KernelsFallback or None
        Fast paths the export found failing (the runtime then serves ``graphs``).
    variants : dict
        Precision -> :class:`VariantSection`, the usable approximate variants.
    """

    graphs: Mapping[str, str]
    opset: int | None = None
    kernels: KernelsSection | None = None
    kernels_fallback: KernelsFallback | None = None
    variants: Mapping[str, VariantSection] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: Any, kind: str, listed: Collection[str]) -> OnnxSection | None:
        if not isinstance(entry, Mapping):
            return None
        graphs = entry.get("graphs")
        graphs = (
            {k: v for k, v in graphs.items() if isinstance(v, str)}
            if isinstance(graphs, Mapping)
            else {}
        )
        opset = entry.get("opset")
        variants = entry.get("variants")
        parsed = {
            p: v
            for p, spec in (variants.items() if isinstance(variants, Mapping) else ())
            if (v := VariantSection.parse(p, spec, listed)) is not None
        }
        return cls(
            graphs=graphs,
            opset=at_least(opset, 1),
            kernels=KernelsSection.parse(entry.get("kernels"), kind, listed),
            kernels_fallback=KernelsFallback.parse(entry.get(KERNELS_FALLBACK)),
            variants=parsed,
        )

    @property
    def complete(self) -> bool:
        """Whether every entry point has its graph."""
        return all(g in self.graphs for g in ENTRY_POINTS)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"graphs": dict(self.graphs)}
        if self.opset is not None:
            out["opset"] = self.opset
        if self.kernels is not None:
            out["kernels"] = self.kernels.to_dict()
        if self.kernels_fallback is not None:
            out[KERNELS_FALLBACK] = self.kernels_fallback.to_dict()
        if self.variants:
            out["variants"] = {p: v.to_dict() for p, v in self.variants.items()}
        return out


@dataclass(frozen=True)
class TorchScriptSection:
    """``formats.torchscript``: one scripted module with every entry point as a method."""

    module: str
    methods: tuple[str, ...] = tuple(ENTRY_POINTS)

    @classmethod
    def parse(cls, entry: Any) -> TorchScriptSection | None:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("module"), str):
            return None
        methods = entry.get("methods")
        names = tuple(m for m in methods if isinstance(m, str)) if isinstance(methods, list) else ()
        return cls(entry["module"], names)

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "methods": list(self.methods)}


@dataclass(frozen=True)
class Pt2Section:
    """``formats.pt2``: one ``torch.export`` program per entry point."""

    programs: Mapping[str, str]

    @classmethod
    def parse(cls, entry: Any) -> Pt2Section | None:
        programs = entry.get("programs") if isinstance(entry, Mapping) else None
        if not isinstance(programs, Mapping):
            return None
        return cls({k: v for k, v in programs.items() if isinstance(v, str)})

    def to_dict(self) -> dict[str, Any]:
        return {"programs": dict(self.programs)}


@dataclass(frozen=True)
class Formats:
    """``formats``: the export formats a bundle holds.

    Attributes
    ----------
    names : tuple of str
        The formats present, as the manifest lists them.
    onnx, torchscript, pt2 : section or None
        Each format's section (None: absent or unusable).
    """

    onnx: OnnxSection | None = None
    torchscript: TorchScriptSection | None = None
    pt2: Pt2Section | None = None
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            present = {"onnx": self.onnx, "torchscript": self.torchscript, "pt2": self.pt2}
            object.__setattr__(self, "names", tuple(f for f in FORMATS if present[f] is not None))

    @classmethod
    def parse(cls, entry: Any, kind: str, listed: Collection[str]) -> Formats:
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            raise ValueError("must be an object")
        return cls(
            onnx=OnnxSection.parse(entry.get("onnx"), kind, listed),
            torchscript=TorchScriptSection.parse(entry.get("torchscript")),
            pt2=Pt2Section.parse(entry.get("pt2")),
            names=tuple(str(k) for k in entry),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.onnx is not None:
            out["onnx"] = self.onnx.to_dict()
        if self.torchscript is not None:
            out["torchscript"] = self.torchscript.to_dict()
        if self.pt2 is not None:
            out["pt2"] = self.pt2.to_dict()
        return out
