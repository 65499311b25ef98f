"""The manifest schema (recsys_export.bundle.schema): every section parsed and written in
one place, bad input named, old bundles read as written."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from recsys_export.bundle.schema import (
    DN_BLOCK_USERS,
    FORMAT_VERSION,
    Formats,
    KernelsFallback,
    KernelsSection,
    Manifest,
    ModelSection,
    OnnxSection,
    ParitySummary,
    Pt2Section,
    SeenSection,
    Timings,
    TorchScriptSection,
    TrainingSection,
    VariantSection,
    Versions,
)
from recsys_export.errors import BundleError

pytestmark = pytest.mark.runtime_only

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WHERE = "bundle /b"
SHA = "0" * 64


def _golden(name: str = "toy-mf") -> dict[str, Any]:
    return json.loads((ARTIFACTS / name / "manifest.json").read_text(encoding="utf-8"))


def _written(**sections: Any) -> dict[str, Any]:
    """A minimal written manifest listing ``files`` with the sections given."""
    files = sections.pop("files", {})
    return {
        "format": "recsys-export-bundle",
        "format_version": 1,
        "files": {rel: {"role": "x", "sha256": SHA, "bytes": 1} for rel in files},
        "model": {"kind": "mf", "n_users": 3, "n_items": 4, "hyperparameters": {}},
        **sections,
    }


def _kernels_entry(**extra: Any) -> dict[str, Any]:
    names = ("score_all", "topk", "recommend_one")
    return {"version": 2, **{n: f"onnx/kernels/{n}.onnx" for n in names}, **extra}


KERNEL_FILES = [f"onnx/kernels/{n}.onnx" for n in ("score_all", "topk", "recommend_one")]


# ---------------------------------------------------------------------- old bundles
@pytest.mark.parametrize("name", ["toy-mf", "toy-densenet"])
def test_golden_manifests_read_as_written(name: str) -> None:
    """The committed bundles (format 1, no kernels, no item names, a parity summary of
    fixed tolerances) parse and write back unchanged."""
    raw = _golden(name)
    manifest = Manifest.parse(copy.deepcopy(raw), WHERE)
    assert manifest.to_dict() == raw
    assert manifest.format_version == 1 <= FORMAT_VERSION
    assert manifest.model.kind == name.removeprefix("toy-") and manifest.model.n_items == 4
    assert manifest.formats.names == ("onnx", "pt2", "torchscript")
    assert manifest.require_onnx().kernels is None and manifest.item_names_file is None
    assert manifest.seen == SeenSection("ids/seen_indptr.npy", "ids/seen_items.npy")
    assert manifest.reference_weights == "reference/state_dict.pt"
    parity = manifest.parity
    assert parity is not None and parity.passed and parity.tolerance is None
    assert parity.describe()[0].startswith("parity: PASS (atol 1e-05, rtol 1e-05), max abs")
    assert "max rel" in parity.describe()[1]


# ---------------------------------------------------------------------- generic keys
@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m.update(format="other"), "not a recsys-export bundle"),
        (lambda m: m.update(format_version=True), "format_version must be a positive integer"),
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer recsys-export"),
        (lambda m: m.pop("files"), "no 'files' table"),
        (lambda m: m["files"].update(x={"role": "r", "sha256": "ab", "bytes": 1}), "64-hex"),
        (lambda m: m.update(id_maps=["ids"]), "'id_maps' in manifest.json must be an object"),
        (lambda m: m.update(id_maps={"users": "ids/u.json"}), "not listed in 'files'"),
    ],
)
def test_generic_keys_are_checked_at_parse(edit: Any, words: str) -> None:
    raw = _written()
    edit(raw)
    with pytest.raises(BundleError, match=words) as info:
        Manifest.parse(raw, WHERE)
    assert str(info.value).startswith(WHERE)


# ---------------------------------------------------------------------- sections
@pytest.mark.parametrize(
    "model",
    [
        None,
        {"kind": "mf", "n_users": "3", "n_items": 4, "hyperparameters": {}},
        {"kind": "mf", "n_users": True, "n_items": 4, "hyperparameters": {}},
        {"kind": "mf", "n_users": 0, "n_items": 4, "hyperparameters": {}},
        {"kind": 1, "n_users": 3, "n_items": 4, "hyperparameters": {}},
        {"kind": "mf", "n_users": 3, "n_items": 4},
    ],
)
def test_model_entry_is_strict(model: Any) -> None:
    """One rule for the model entry (the runtime and verify alike)."""
    raw = _written()
    raw["model"] = model
    manifest = Manifest.parse(raw, WHERE)  # loads: sections are checked on use
    with pytest.raises(BundleError, match=r"^bundle /b: manifest.json has no valid 'model'"):
        manifest.model  # noqa: B018


def test_model_section_properties() -> None:
    dn = ModelSection("densenet", 3, 4, {"hidden": 16})
    assert (dn.hidden, dn.block_users, dn.is_generic) == (16, None, False)
    generic = ModelSection("generic", 3, 4, {"block_users": 5})
    assert (generic.hidden, generic.block_users, generic.is_generic) == (0, 5, True)
    assert ModelSection.parse(dn.to_dict()) == dn


def test_malformed_sections_name_the_bundle_and_the_section() -> None:
    manifest = Manifest.parse(_written(formats=["onnx"], item_names=3), WHERE)
    with pytest.raises(BundleError, match=r"^bundle /b: manifest.json 'formats' must be"):
        manifest.formats  # noqa: B018
    with pytest.raises(BundleError, match="'item_names' in the manifest must name a file"):
        manifest.item_names_file  # noqa: B018


@pytest.mark.parametrize(
    ("kind", "entry", "files", "usable"),
    [
        ("mf", _kernels_entry(), KERNEL_FILES, True),
        ("mf", _kernels_entry(version=1), KERNEL_FILES, True),
        ("densenet", _kernels_entry(version=1), KERNEL_FILES, False),  # v1 tiles: not read
        ("generic", _kernels_entry(), KERNEL_FILES, False),
        ("mf", _kernels_entry(), KERNEL_FILES[:2], False),  # a kernel file not listed
        ("densenet", _kernels_entry(block_users=0), KERNEL_FILES, False),
        ("densenet", _kernels_entry(block_users=True), KERNEL_FILES, False),
    ],
)
def test_kernels_are_used_only_when_readable(
    kind: str, entry: dict, files: list[str], usable: bool
) -> None:
    """Unusable fast paths are never an error: the runtime serves the graphs then."""
    graphs = {e: f"onnx/{e}.onnx" for e in ("score", "score_all", "recommend")}
    raw = _written(files=files, formats={"onnx": {"graphs": graphs, "kernels": entry}})
    raw["model"]["kind"] = kind
    kernels = Manifest.parse(raw, WHERE).require_onnx().kernels
    assert (kernels is not None) == usable
    if usable:
        assert kernels is not None and kernels.call_users == DN_BLOCK_USERS


def test_kernel_groups_need_both_group_graphs() -> None:
    listed = [*KERNEL_FILES, "g/score_groups.onnx"]
    entry = _kernels_entry(score_groups="g/score_groups.onnx", groups=4, group_width=8)
    kernels = KernelsSection.parse(entry, "mf", listed)
    assert kernels is not None and (kernels.groups, "score_groups" in kernels.files) == (0, False)
    entry["group_max"] = "g/group_max.onnx"
    kernels = KernelsSection.parse(entry, "mf", [*listed, "g/group_max.onnx"])
    assert kernels is not None and (kernels.groups, kernels.group_width) == (4, 8)
    assert KernelsSection.parse(kernels.to_dict(), "mf", [*listed, "g/group_max.onnx"]) == kernels


def test_variants_need_their_graphs_listed() -> None:
    fp16 = VariantSection("fp16", {"score": "v/s.onnx", "score_all": "v/a.onnx"}, compute="x")
    assert VariantSection.parse("fp16", fp16.to_dict(), ["v/s.onnx", "v/a.onnx"]) == fp16
    assert VariantSection.parse("fp16", fp16.to_dict(), ["v/s.onnx"]) is None
    assert VariantSection.parse("fp32", fp16.to_dict(), ["v/s.onnx", "v/a.onnx"]) is None
    raw = _written(formats={"onnx": {"graphs": {}, "variants": {"fp16": fp16.to_dict()}}})
    with pytest.raises(BundleError, match=r"has no fp16 variant \(it has fp32\)"):
        Manifest.parse(raw, WHERE).variant("fp16")


def test_sections_write_what_they_read() -> None:
    """What the exporter builds is what a reader parses back (files listed)."""
    names = ("score_all", "topk", "recommend_one")
    kernels = KernelsSection(2, {n: f"k/{n}.onnx" for n in names}, block_users=8)
    int8 = VariantSection(
        "int8",
        {"score": "v/s.onnx", "score_all_partial": "v/p.onnx"},
        arrays={"user_bias": "v/b.npy"},
        factor_bytes={"int8": 1, "fp32": 4},
        quality={"recall@10": 0.99},
    )
    graphs = {e: f"onnx/{e}.onnx" for e in ("score", "score_all", "recommend")}
    fallback = KernelsFallback("failed parity", {"version": 2})
    formats = Formats(
        onnx=OnnxSection(graphs, 20, kernels, fallback, {"int8": int8}),
        torchscript=TorchScriptSection("torchscript/model.pt"),
        pt2=Pt2Section({"score_all": "pt2/score_all.pt2"}),
    )
    built = Manifest.build(
        model=ModelSection("densenet", 3, 4, {"hidden": 2}),
        formats=formats,
        seen=SeenSection("ids/i.npy", "ids/s.npy"),
        reference_weights="reference/state_dict.pt",
        versions=Versions(torch="2"),
        training=TrainingSection({"epochs": 1}, {"rmse": 1.0}),
        timings=Timings({"onnx": 1.23456}),
    )
    assert built.formats is formats and built.parity is None
    listed = [*graphs.values(), *kernels.files.values(), "v/s.onnx", "v/p.onnx", "v/b.npy"]
    raw = {**_written(files=listed), **built.to_dict()}
    parsed = Manifest.parse(raw, WHERE)
    assert parsed.formats == Formats(formats.onnx, formats.torchscript, formats.pt2)
    assert parsed.model == built.model and parsed.versions.torch == "2"
    assert parsed.timings.export_seconds == {"onnx": 1.235}
    assert parsed.training.metrics == {"rmse": 1.0} and parsed.training.data == {}
    assert set(parsed.entry_points) == {"score", "score_all", "recommend"}
    assert parsed.entry_points["score_all"].outputs[0].shape == ("batch", 4)


def test_replace_keeps_the_other_sections() -> None:
    raw = _written(formats={"onnx": {"graphs": {"score": "s.onnx"}}}, extra={"kept": 1})
    manifest = Manifest.parse(raw, WHERE)
    summary = ParitySummary.parse({"passed": True, "tolerance": "t", "rows": [], "plan": None})
    replaced = manifest.replace(parity=summary)
    assert replaced.parity is summary and replaced.to_dict()["parity"]["tolerance"] == "t"
    assert replaced.to_dict()["extra"] == {"kept": 1} and manifest.parity is None
    assert replaced.files == manifest.files and replaced.formats.onnx == manifest.formats.onnx


def test_parity_summary_of_the_error_model() -> None:
    summary = ParitySummary.parse(
        {
            "passed": False,
            "tolerance": "float32 error bound (mf, docs/parity.md)",
            "max_ratio": None,
            "rows": [
                {
                    "format": "onnx",
                    "entry_point": "score",
                    "passed": True,
                    "max_ratio": 0.5,
                    "max_abs_diff": 1e-7,
                },
                {
                    "format": "runtime",
                    "entry_point": "recommend",
                    "passed": False,
                    "max_ratio": None,
                    "max_abs_diff": None,
                },
            ],  # fmt: skip
            "notes": ["runtime: served from the portable graphs"],
        }
    )
    assert summary.failed() == ["runtime:recommend"]
    lines = summary.describe()
    assert lines[0] == "parity: FAIL (float32 error bound (mf, docs/parity.md))"
    assert "err/bound 0.5" in lines[1] and "err/bound inf" in lines[2] and "max abs inf" in lines[2]
    assert lines[3] == "runtime: served from the portable graphs"
    assert summary.describe(details=False) == [lines[0], lines[3]]
