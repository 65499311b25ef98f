"""The bundle contract shared by the exporter, the runtime and the docs (no torch).

Every format exposes the same three entry points with the same input and output names,
dtypes and shapes (:data:`ENTRY_POINTS`). ``batch``, ``n`` and ``n_excluded`` are
dynamic; ``k`` is the run-time value of the ``k`` input.

:class:`BundleSpec` is what the torch-free readers use of a ``manifest.json``, parsed and
checked once (:attr:`recsys_export.bundle.Bundle.spec`); the fast-path kernel constants
the exporter writes and the runtime reads live here too.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from recsys_export.errors import BundleError
from recsys_export.validation import check_choice

#: Every export format, in the order they are written and listed.
FORMATS = ("onnx", "torchscript", "pt2")

#: The formats an export writes when none are named: ONNX (the torch-free runtime) and
#: TorchScript (libtorch). ``pt2`` (torch.export) is opt-in (``--formats all``): it adds
#: several seconds per export, mostly importing ``torch._dynamo`` to write the programs
#: and again for parity to load them back (docs/performance.md).
DEFAULT_FORMATS = ("onnx", "torchscript")

ENTRY_POINTS: dict[str, dict[str, Any]] = {
    "score": {
        "doc": "Pairwise scores: the post's forward(users, items).",
        "inputs": [
            {"name": "users", "dtype": "int64", "shape": ["n"]},
            {"name": "items", "dtype": "int64", "shape": ["n"]},
        ],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["n"]}],
    },
    "score_all": {
        "doc": "One row of the full user x item score matrix per user.",
        "inputs": [{"name": "users", "dtype": "int64", "shape": ["batch"]}],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch", "n_items"]}],
    },
    "recommend": {
        "doc": (
            "Best k items per user, sorted by descending score, excluded items removed. "
            "Excluded items are COO pairs: exclude_rows[j] is a position in users "
            "(0..batch-1), exclude_items[j] an item index to drop for that user. Slots "
            "no admissible item can fill hold item -1 and score -inf."
        ),
        "inputs": [
            {"name": "users", "dtype": "int64", "shape": ["batch"]},
            {"name": "k", "dtype": "int64", "shape": []},
            {"name": "exclude_rows", "dtype": "int64", "shape": ["n_excluded"]},
            {"name": "exclude_items", "dtype": "int64", "shape": ["n_excluded"]},
        ],
        "outputs": [
            {"name": "scores", "dtype": "float32", "shape": ["batch", "k"]},
            {"name": "items", "dtype": "int64", "shape": ["batch", "k"]},
        ],
    },
}


def entry_point_spec(n_items: int) -> dict[str, Any]:
    """The entry-point table of a manifest, with ``n_items`` filled in."""
    spec = copy.deepcopy(ENTRY_POINTS)
    for entry in spec.values():
        for port in entry["inputs"] + entry["outputs"]:
            port["shape"] = [n_items if d == "n_items" else d for d in port["shape"]]
    return spec


# ---------------------------------------------------------------------- fast-path kernels
#: Version of the optional fast-path graphs under ``formats.onnx.kernels`` that the
#: exporter writes.
KERNELS_VERSION = 2
#: Where the exporter writes them, inside the bundle.
KERNELS_DIR = "onnx/kernels"
#: The kernel graphs, by manifest key.
KERNEL_NAMES = ("score_all", "topk", "recommend_one")
#: Optional kernel graphs (MF): ``score_groups`` and ``group_max``, the scores over items
#: padded to groups and their group maxima, for the runtime's threshold top-k (with the
#: manifest's ``groups``, their count), and
#: ``recommend_user``, one user's top-k with the exclusions' -inf given by the caller.
OPTIONAL_KERNELS = ("score_groups", "group_max", "recommend_user")
#: Where an export that verified the kernels and found them failing records them (under
#: ``formats.onnx``, instead of ``kernels``: the runtime then runs the entry-point
#: graphs), with the one-line ``reason``.
KERNELS_FALLBACK = "kernels_fallback"
#: Kernel versions the runtime reads, per model kind (MF's graphs did not change in 2;
#: DenseNet's version-1 tiles were driven one session call per tile and are not read).
KERNELS_READ = {"mf": (1, 2), "densenet": (2,)}
#: DenseNet ``score_all`` kernel: users per call the runtime sends (the manifest's
#: ``block_users``, this when it does not say), and what the exporter sizes tiles for.
DN_BLOCK_USERS = 8


# ---------------------------------------------------------------------- precision variants
#: Precisions of ``export --precision``: ``fp32`` is the exact bundle; ``fp16`` and
#: ``int8`` add an approximate variant under ``VARIANTS_DIR/<precision>/``, listed under
#: ``formats.onnx.variants`` and loaded only when asked for.
PRECISIONS = ("fp32", "fp16", "int8")
VARIANTS_DIR = "onnx/variants"


def check_precision(precision: Any) -> str:
    """Validate a precision name (one of :data:`PRECISIONS`).

    Raises
    ------
    ConfigError
        Any other value.
    """
    return str(check_choice("precision", precision, PRECISIONS))


def parse_precisions(precision: Any) -> list[str]:
    """The approximate variants an export writes: ``"fp16,int8"``, a sequence, or one
    name (``fp32`` alone: none).

    Raises
    ------
    ConfigError
        An unknown name.
    """
    names = precision.split(",") if isinstance(precision, str) else list(precision)
    checked = [check_precision(str(p).strip()) for p in names if str(p).strip()]
    return [p for p in PRECISIONS[1:] if p in checked]


@dataclass(frozen=True)
class VariantSpec:
    """An approximate variant (``formats.onnx.variants.<precision>``).

    Attributes
    ----------
    precision : str
        ``fp16`` or ``int8``.
    graphs : dict
        ``score`` and either ``score_all`` or (int8) ``score_all_partial`` (the scores
        without the user bias, which the runtime adds from ``arrays["user_bias"]``), and
        for int8 ``score_groups`` -> file.
    groups, group_width : int
        Item groups of ``score_groups`` and their width (0 without it).
    arrays : dict
        int8: ``users``, ``items`` (the float32 augmented factors of the exact re-rank)
        and ``user_bias`` -> ``.npy`` file.
    kernel_score_all : bool
        fp16: ``score_all`` is the tiled fast-path kernel (sized like the exact one).
    entry : dict
        The manifest entry as written (sizes, the parity judgement).
    """

    precision: str
    graphs: dict[str, str]
    groups: int
    group_width: int
    arrays: dict[str, str]
    kernel_score_all: bool
    entry: dict[str, Any]


def _listed_files(value: Any, listed: Collection[str]) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: f for k, f in value.items() if isinstance(f, str) and f in listed}


def _parse_variants(entry: Any, listed: Collection[str]) -> dict[str, VariantSpec]:
    out: dict[str, VariantSpec] = {}
    if not isinstance(entry, dict):
        return out
    for precision, spec in entry.items():
        if precision not in PRECISIONS[1:] or not isinstance(spec, dict):
            continue
        graphs = _listed_files(spec.get("graphs"), listed)
        arrays = _listed_files(spec.get("arrays"), listed)
        partial = "score_all_partial" in graphs and "user_bias" in arrays
        if "score" not in graphs or not ("score_all" in graphs or partial):
            continue
        groups, width = _group_shape(spec, graphs)
        out[precision] = VariantSpec(
            precision=precision,
            graphs=graphs,
            groups=groups,
            group_width=width,
            arrays=arrays,
            kernel_score_all=bool(spec.get("kernel_score_all")),
            entry=dict(spec),
        )
    return out


# ---------------------------------------------------------------------- typed spec
@dataclass(frozen=True)
class ModelSpec:
    """The manifest's ``model`` entry.

    Attributes
    ----------
    kind : str
        ``"mf"``, ``"densenet"`` or ``"generic"`` (``byom``'s pair-by-pair modules).
    n_users, n_items : int
        Sizes.
    hyperparameters : dict
        Constructor arguments (``generic``: what the export recorded).
    """

    kind: str
    n_users: int
    n_items: int
    hyperparameters: dict[str, Any]

    def int_hp(self, name: str, default: int = 0) -> int:
        """An integer hyperparameter (``default`` when absent, ``None``/0 or not an int)."""
        value = self.hyperparameters.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return default
        return value


@dataclass(frozen=True)
class KernelSpec:
    """Usable fast-path graphs (``formats.onnx.kernels``) of a bundle.

    Attributes
    ----------
    version : int
        Kernel version (one :data:`KERNELS_READ` lists for the model kind).
    block_users : int
        Users per DenseNet ``score_all`` kernel call.
    files : dict
        :data:`KERNEL_NAMES` (and the :data:`OPTIONAL_KERNELS` present) -> bundle-relative
        file name (listed in the manifest).
    groups, group_width : int
        Item groups of the ``score_groups`` kernel and their width (0 when the bundle
        has none).
    """

    version: int
    block_users: int
    files: dict[str, str]
    groups: int = 0
    group_width: int = 0


@dataclass(frozen=True)
class BundleSpec:
    """What the torch-free readers (runtime, ray engine, ``inspect``) use of a manifest,
    parsed and checked once.

    Attributes
    ----------
    where : str
        ``"bundle <root>"``, the prefix of error messages.
    model : ModelSpec
    formats : tuple of str
        Export formats present.
    onnx_graphs : dict or None
        Entry point -> ONNX file, when the bundle has all three entry-point graphs.
    kernels : KernelSpec or None
        Usable fast-path graphs, or None (absent, another version, or incomplete).
    seen : (str, str) or None
        ``(indptr, items)`` file names of the seen-items CSR, or None.
    item_names : Any
        The manifest's ``item_names`` entry as written (checked by :meth:`names_file`).
    versions : dict
        Library versions the bundle was written and verified with.
    variants : dict
        Precision -> :class:`VariantSpec`: the approximate variants present.
    """

    where: str
    model: ModelSpec
    formats: tuple[str, ...]
    onnx_graphs: dict[str, str] | None
    kernels: KernelSpec | None
    seen: tuple[str, str] | None
    item_names: Any
    versions: dict[str, Any]
    variants: dict[str, VariantSpec]

    @classmethod
    def parse(
        cls, manifest: Mapping[str, Any], where: str, listed: Collection[str] = ()
    ) -> BundleSpec:
        """Parse and check a manifest.

        Parameters
        ----------
        manifest : Mapping
            The parsed ``manifest.json``.
        where : str
            Prefix of error messages (``"bundle <root>"``).
        listed : collection of str
            The files the manifest lists (kernels naming others are not used).

        Raises
        ------
        BundleError
            ``model`` lacks ``n_users``/``n_items``.
        """
        model = manifest.get("model") or {}
        try:
            n_users, n_items = int(model["n_users"]), int(model["n_items"])
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{where}: manifest 'model' lacks n_users/n_items") from None
        spec_model = ModelSpec(
            str(model.get("kind", "")), n_users, n_items, dict(model.get("hyperparameters") or {})
        )
        formats = manifest.get("formats") or {}
        onnx_fmt = formats.get("onnx") or {}
        graphs = onnx_fmt.get("graphs")
        ok = isinstance(graphs, dict) and all(g in graphs for g in ENTRY_POINTS)
        seen = manifest.get("seen")
        return cls(
            where=where,
            model=spec_model,
            formats=tuple(formats),
            onnx_graphs={g: graphs[g] for g in ENTRY_POINTS} if ok and graphs else None,
            kernels=_parse_kernels(onnx_fmt.get("kernels"), spec_model.kind, listed),
            seen=(seen["indptr"], seen["items"])
            if isinstance(seen, dict) and "indptr" in seen and "items" in seen
            else None,
            item_names=manifest.get("item_names"),
            versions=dict(manifest.get("versions") or {}),
            variants=_parse_variants(onnx_fmt.get("variants"), listed),
        )

    def require_onnx(self, who: str = "the runtime needs them") -> dict[str, str]:
        """The entry-point ONNX graphs.

        Raises
        ------
        BundleError
            The bundle was exported without the ``onnx`` format.
        """
        if self.onnx_graphs is None:
            raise BundleError(
                f"{self.where} has no ONNX graphs (formats.onnx.graphs with "
                f"{', '.join(ENTRY_POINTS)}); {who}: re-export with --formats onnx"
            )
        return self.onnx_graphs

    def variant(self, precision: str) -> VariantSpec:
        """The approximate variant of ``precision``.

        Raises
        ------
        BundleError
            The bundle has none (exported without ``--precision``).
        """
        found = self.variants.get(precision)
        if found is None:
            have = ", ".join(["fp32", *sorted(self.variants)])
            raise BundleError(
                f"{self.where} has no {precision} variant (it has {have}); export it with "
                f"--precision {precision}, or load the exact one (precision='fp32')"
            )
        return found

    def names_file(self) -> str | None:
        """The item-names file, or None when the bundle has none.

        Raises
        ------
        BundleError
            ``item_names`` is not a file name.
        """
        if self.item_names is None:
            return None
        if not isinstance(self.item_names, str):
            raise BundleError(f"{self.where}: 'item_names' in the manifest must name a file")
        return self.item_names


def _parse_kernels(entry: Any, kind: str, listed: Collection[str]) -> KernelSpec | None:
    if not isinstance(entry, dict) or entry.get("version") not in KERNELS_READ.get(kind, ()):
        return None
    block_users = entry.get("block_users", DN_BLOCK_USERS)
    if isinstance(block_users, bool) or not isinstance(block_users, int) or block_users < 1:
        return None
    files = {}
    for name in KERNEL_NAMES:
        rel = entry.get(name)
        if not isinstance(rel, str) or rel not in listed:
            return None
        files[name] = rel
    for name in OPTIONAL_KERNELS:
        rel = entry.get(name)
        if isinstance(rel, str) and rel in listed:
            files[name] = rel
    groups, width = _group_shape(entry, files)
    return KernelSpec(int(entry["version"]), block_users, files, groups, width)


def _group_shape(entry: dict[str, Any], files: dict[str, str]) -> tuple[int, int]:
    """``(groups, group_width)`` of a kernel or variant entry whose ``score_groups`` and
    ``group_max`` graphs are both in ``files``; else ``(0, 0)``, those graphs dropped."""
    groups, width = entry.get("groups"), entry.get("group_width")
    if (
        isinstance(groups, int)
        and isinstance(width, int)
        and _positive_int(groups)
        and _positive_int(width)
        and {"score_groups", "group_max"} <= set(files)
    ):
        return groups, width
    files.pop("score_groups", None)
    files.pop("group_max", None)
    return 0, 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
