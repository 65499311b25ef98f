"""Embedding examples: bundles served from C++ (libtorch) and Node.js (onnxruntime-node).

The commands, the example inputs and the code snippets all come from ``docs/runtimes.md``
(fenced blocks after ``<!-- embedding-test: NAME -->`` markers), so the documentation shows
exactly what runs here. Outputs of ``examples/cpp`` and ``examples/node`` are compared with
Python: onnxruntime on the same ONNX graphs and the eager model (``atol = rtol = 1e-5``,
recommended items exactly). Runs on fresh MF and DenseNet bundles and on every committed
bundle under ``artifacts/*/manifest.json``.

Missing tools (g++, torch headers, node, npm) skip these tests, except under ``CI=true``,
where they fail. The C++ build and the npm install are cached (``examples/cpp/build/``,
``examples/node/node_modules/``, both git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recsys_export.bundle import Bundle
from recsys_export.bundle.schema import ENTRY_POINTS
from recsys_export.export import export_bundle
from recsys_export.models.synthetic import synthetic_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "runtimes.md"
CPP_DIR = ROOT / "examples" / "cpp"
CPP_BINARY = CPP_DIR / "build" / "recsys_example"
NODE_DIR = ROOT / "examples" / "node"
ARTIFACT_MANIFESTS = sorted((ROOT / "artifacts").glob("*/manifest.json"))
ATOL = RTOL = 1e-5
N_USERS, N_ITEMS = 30, 25
INPUT_NAMES = ("score_users", "score_items", "users", "k", "exclude_rows", "exclude_items")
CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI=true (where every tool must be present)."""
    if CI:
        pytest.fail(f"{reason} (CI=true: examples must run in CI)")
    pytest.skip(reason)


# --------------------------------------------------------------------------- the doc

_BLOCK = re.compile(r"<!-- embedding-test: ([\w-]+) -->\n```[^\n]*\n(.*?)\n```", re.S)


def doc_blocks() -> dict[str, str]:
    """``{name: text}`` of the fenced blocks marked ``<!-- embedding-test: name -->``."""
    blocks: dict[str, str] = {}
    for name, body in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        assert name not in blocks, f"{DOC}: block {name!r} appears twice"
        blocks[name] = body
    return blocks


def doc_table() -> list[tuple[str, str, str, str, list[str]]]:
    """Rows ``(entry, port, name, dtype, shape)`` of the doc's entry-point table."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if "<!-- entry-points-table" in line)
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "entry point" or set("".join(cells)) <= set("-: "):
            continue  # header or separator row
        entry, port, name, dtype, shape = cells
        assert shape.startswith("[") and shape.endswith("]"), line
        dims = [d.strip() for d in shape[1:-1].split(",") if d.strip()]
        rows.append((entry, port, name, dtype, dims))
    return rows


def run_doc_command(block: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run a doc command block with bash from the repository root."""
    cmd = doc_blocks()[block]
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", cmd],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_inputs(text: str) -> dict[str, list[int]]:
    """The shared input-file format: ``name v1 v2 ...`` lines; ``#`` and blank ignored."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            out[fields[0]] = [int(v) for v in fields[1:]]
    return out


def format_inputs(inputs: dict[str, list[int]]) -> str:
    return "".join(f"{name} {' '.join(map(str, inputs[name]))}\n" for name in INPUT_NAMES)


def test_doc_table_matches_entry_points():
    want = [
        (entry, port, p["name"], p["dtype"], list(p["shape"]))
        for entry, spec in ENTRY_POINTS.items()
        for port, key in (("input", "inputs"), ("output", "outputs"))
        for p in spec[key]
    ]
    assert doc_table() == want


def test_doc_blocks_present():
    blocks = doc_blocks()
    want = {"inputs", "cpp-build", "cpp-run", "cpp-snippet", "node-install", "node-run"}
    assert want | {"node-snippet"} == set(blocks)
    assert set(parse_inputs(blocks["inputs"])) == set(INPUT_NAMES)
    assert "examples/cpp/build/recsys_example" in blocks["cpp-run"]
    assert "examples/node/recommend.js" in blocks["node-run"]
    assert "--ignore-scripts" in blocks["node-install"]


def _code_lines(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        code = " ".join(line.split("//", 1)[0].split())
        if code:
            lines.append(code)
    return lines


def test_doc_cpp_snippet_is_main_cpp():
    """The C++ calls shown in the doc are main.cpp's own lines, in order."""
    source = _code_lines((CPP_DIR / "main.cpp").read_text(encoding="utf-8"))
    pos = 0
    for line in _code_lines(doc_blocks()["cpp-snippet"]):
        assert line in source[pos:], f"doc line not in examples/cpp/main.cpp: {line}"
        pos = source.index(line, pos) + 1


def test_node_package_is_pinned():
    pkg = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((NODE_DIR / "package-lock.json").read_text(encoding="utf-8"))
    pinned = pkg["dependencies"]["onnxruntime-node"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"pin an exact version, not {pinned!r}"
    assert lock["packages"]["node_modules/onnxruntime-node"]["version"] == pinned
    assert lock["packages"][""]["dependencies"]["onnxruntime-node"] == pinned


# --------------------------------------------------------------------------- tools


@pytest.fixture(scope="module")
def cpp_example() -> Path:
    """Build examples/cpp with the doc's command (cached by build.sh)."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        _unavailable(f"C++ compiler {cxx!r} not found")
    from torch.utils.cpp_extension import include_paths

    if not any((Path(p) / "torch" / "script.h").is_file() for p in include_paths()):
        _unavailable("torch C++ headers (torch/script.h) not found in this torch install")
    proc = run_doc_command("cpp-build", timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"examples/cpp/build.sh failed:\n{proc.stdout}\n{proc.stderr}")
    assert CPP_BINARY.is_file()
    return CPP_BINARY


def _installed_ort_version() -> str | None:
    pkg = NODE_DIR / "node_modules" / "onnxruntime-node" / "package.json"
    if not pkg.is_file():
        return None
    return json.loads(pkg.read_text(encoding="utf-8")).get("version")


@pytest.fixture(scope="module")
def node_example() -> Path:
    """Install examples/node with the doc's command, unless the pinned version is there."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not found")
    pinned = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"][
        "onnxruntime-node"
    ]
    if _installed_ort_version() != pinned:
        proc = run_doc_command("node-install", timeout=600)
        if proc.returncode != 0:
            _unavailable(f"npm install of examples/node failed:\n{proc.stdout}\n{proc.stderr}")
        assert _installed_ort_version() == pinned
    return NODE_DIR / "recommend.js"


# --------------------------------------------------------------------------- bundles


@dataclass
class BundleCase:
    """A bundle plus the Python references for each input set."""

    path: Path
    manifest: dict[str, Any]
    model: torch.nn.Module | None
    cases: dict[str, str] = field(default_factory=dict)  # name -> input file text
    expected: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def formats(self) -> dict[str, Any]:
        return self.manifest.get("formats", {})


def _input_cases(n_users: int, n_items: int) -> dict[str, str]:
    doc_text = doc_blocks()["inputs"]
    doc = parse_inputs(doc_text)
    batch = len(doc["users"])
    fitted = {
        "score_users": [u % n_users for u in doc["score_users"]],
        "score_items": [i % n_items for i in doc["score_items"]],
        "users": [u % n_users for u in doc["users"]],
        "k": [min(doc["k"][0], n_items)],
        "exclude_rows": [r % batch for r in doc["exclude_rows"]],
        "exclude_items": [i % n_items for i in doc["exclude_items"]],
    }
    last_u, last_i = n_users - 1, n_items - 1
    return {
        # The doc's example inputs verbatim whenever they fit the bundle.
        "doc": doc_text + "\n" if fitted == doc else format_inputs(fitted),
        # k = n_items with exclusions: unfillable slots (-1 / -inf, printed as null).
        "full": format_inputs(
            {
                "score_users": [last_u],
                "score_items": [last_i],
                "users": [last_u, 0],
                "k": [n_items],
                "exclude_rows": [0, 0, 1],
                "exclude_items": [0, last_i, min(1, last_i)],
            }
        ),
        # No exclusions: empty int64[0] tensors.
        "none": format_inputs(
            {
                "score_users": [0, last_u],
                "score_items": [last_i, 0],
                "users": [min(2, last_u)],
                "k": [1],
                "exclude_rows": [],
                "exclude_items": [],
            }
        ),
    }


def _arrays(inputs: dict[str, list[int]]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.int64) for k, v in inputs.items()}


def _onnx_outputs(path: Path, graphs: dict[str, str], inputs: dict[str, list[int]]):
    import onnxruntime as ort

    a = _arrays(inputs)
    feeds = {
        "score": {"users": a["score_users"], "items": a["score_items"]},
        "score_all": {"users": a["users"]},
        "recommend": {
            "users": a["users"],
            "k": np.asarray(inputs["k"][0], dtype=np.int64),
            "exclude_rows": a["exclude_rows"],
            "exclude_items": a["exclude_items"],
        },
    }
    out = {}
    for entry, feed in feeds.items():
        sess = ort.InferenceSession(str(path / graphs[entry]), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        out[entry] = dict(zip(names, sess.run(None, feed)))
    return out


def _eager_outputs(model: torch.nn.Module, inputs: dict[str, list[int]]):
    t = {k: torch.from_numpy(v) for k, v in _arrays(inputs).items()}
    with torch.no_grad():
        scores = model(t["score_users"], t["score_items"])
        all_scores = model.score_all(t["users"])
        top_s, top_i = model.recommend(
            t["users"], inputs["k"][0], t["exclude_rows"], t["exclude_items"]
        )
    return {
        "score": {"scores": scores.numpy()},
        "score_all": {"scores": all_scores.numpy()},
        "recommend": {"scores": top_s.numpy(), "items": top_i.numpy()},
    }


def _make_case(path: Path, model: torch.nn.Module | None) -> BundleCase:
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    if model is None and manifest.get("reference", {}).get("state_dict"):
        from recsys_export.parity import reference_model

        model = reference_model(Bundle.load(path))
    case = BundleCase(path, manifest, model)
    n_users, n_items = manifest["model"]["n_users"], manifest["model"]["n_items"]
    case.cases = _input_cases(n_users, n_items)
    for name, text in case.cases.items():
        inputs = parse_inputs(text)
        refs = {}
        if "onnx" in case.formats:
            refs["onnxruntime"] = _onnx_outputs(path, case.formats["onnx"]["graphs"], inputs)
        if model is not None:
            refs["eager"] = _eager_outputs(model, inputs)
        case.expected[name] = refs
    return case


def _fresh_bundle(kind: str, out: Path) -> BundleCase:
    ck = synthetic_checkpoint(
        kind,
        N_USERS,
        N_ITEMS,
        init_std=0.3,
        seed=11 if kind == "mf" else 12,
        seen=(np.array([0, 0, 1]), np.array([1, 2, 3])),
    )
    export_bundle(ck, out, formats="onnx,torchscript", verify=False)
    return _make_case(out, ck.model)


_BUNDLE_PARAMS = ["mf", "densenet"] + [f"artifacts/{m.parent.name}" for m in ARTIFACT_MANIFESTS]
if not ARTIFACT_MANIFESTS:
    _BUNDLE_PARAMS.append(
        pytest.param("artifacts", marks=pytest.mark.skip(reason="no bundles in artifacts/"))
    )


@pytest.fixture(scope="module", params=_BUNDLE_PARAMS)
def bundle(request, tmp_path_factory) -> BundleCase:
    if request.param.startswith("artifacts/"):
        return _make_case(ROOT / request.param, None)
    return _fresh_bundle(request.param, tmp_path_factory.mktemp(request.param) / "bundle")


# --------------------------------------------------------------------------- checks


def _as_array(value: Any, integer: bool) -> np.ndarray:
    if integer:
        return np.asarray(value, dtype=np.int64)
    arr = np.asarray(value, dtype=np.float64)  # null (non-finite score) -> nan
    return np.where(np.isnan(arr), -np.inf, arr)


def assert_matches(got: dict[str, Any], refs: dict[str, Any], label: str) -> None:
    assert refs, f"{label}: no Python reference available"
    for ref_name, ref in refs.items():
        for entry, outputs in ref.items():
            for name, want in outputs.items():
                where = f"{label}: {entry}.{name} vs {ref_name}"
                integer = want.dtype == np.int64
                value = _as_array(got[entry][name], integer)
                assert value.shape == want.shape, where
                if integer:
                    np.testing.assert_array_equal(value, want, err_msg=where)
                else:
                    np.testing.assert_allclose(value, want, atol=ATOL, rtol=RTOL, err_msg=where)


def _run_program(block: str, case: BundleCase, name: str, tmp_path: Path) -> dict[str, Any]:
    inputs = tmp_path / f"{name}.txt"
    inputs.write_text(case.cases[name], encoding="utf-8")
    proc = run_doc_command(block, {"BUNDLE": str(case.path), "INPUTS": str(inputs)})
    assert proc.returncode == 0, f"{block} failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_python_references_agree(bundle):
    for name, refs in bundle.expected.items():
        if {"onnxruntime", "eager"} <= set(refs):
            assert_matches(refs["onnxruntime"], {"eager": refs["eager"]}, f"python/{name}")


@pytest.mark.embedding
def test_cpp_matches_python(cpp_example, bundle, tmp_path):
    if "torchscript" not in bundle.formats:
        pytest.skip("bundle has no TorchScript module")
    for name in bundle.cases:
        got = _run_program("cpp-run", bundle, name, tmp_path)
        assert_matches(got, bundle.expected[name], f"C++/{name}")


@pytest.mark.embedding
def test_node_matches_python(node_example, bundle, tmp_path):
    if "onnx" not in bundle.formats:
        pytest.skip("bundle has no ONNX graphs")
    for name in bundle.cases:
        got = _run_program("node-run", bundle, name, tmp_path)
        assert_matches(got, bundle.expected[name], f"Node/{name}")


@pytest.mark.embedding
def test_cpp_accepts_module_path(cpp_example, bundle, tmp_path):
    """A path to the .pt file works in place of the bundle directory."""
    if "torchscript" not in bundle.formats:
        pytest.skip("bundle has no TorchScript module")
    inputs = tmp_path / "none.txt"
    inputs.write_text(bundle.cases["none"], encoding="utf-8")
    module = bundle.path / bundle.formats["torchscript"]["module"]
    proc = subprocess.run(
        [str(cpp_example), str(module), str(inputs)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert_matches(json.loads(proc.stdout), bundle.expected["none"], "C++/module-path")


_NODE_SNIPPET_WRAPPER = """
const fs = require('node:fs');
const bundle = process.env.BUNDLE;
const manifest = JSON.parse(fs.readFileSync(`${bundle}/manifest.json`, 'utf8'));
(async () => {
%s
  const finite = (x) => (Number.isFinite(x) ? x : null);
  const rows = (t, f) => {
    const flat = Array.from(t.data, f);
    const [b, k] = t.dims;
    return Array.from({ length: b }, (_, r) => flat.slice(r * k, (r + 1) * k));
  };
  process.stdout.write(JSON.stringify({ scores: rows(out.scores, finite),
                                        items: rows(out.items, Number) }));
})().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.mark.embedding
def test_doc_node_snippet(node_example, bundle):
    """The doc's JS snippet runs as shown and gives Python's recommend for the doc inputs."""
    if bundle.cases["doc"] != doc_blocks()["inputs"] + "\n":
        pytest.skip("the doc's example inputs do not fit this bundle")
    script = _NODE_SNIPPET_WRAPPER % doc_blocks()["node-snippet"]
    proc = subprocess.run(
        ["node", "-e", script],
        cwd=NODE_DIR,  # require('onnxruntime-node') resolves from here
        env={**os.environ, "BUNDLE": str(bundle.path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    refs = {
        ref: {"recommend": outputs["recommend"]} for ref, outputs in bundle.expected["doc"].items()
    }
    assert_matches({"recommend": json.loads(proc.stdout)}, refs, "doc node snippet")


@pytest.mark.embedding
def test_cpp_rejects_bad_input(cpp_example, bundle, tmp_path):
    if "torchscript" not in bundle.formats:
        pytest.skip("bundle has no TorchScript module")
    inputs = tmp_path / "bad.txt"
    inputs.write_text("users 0\nk 1\n", encoding="utf-8")
    proc = run_doc_command("cpp-run", {"BUNDLE": str(bundle.path), "INPUTS": str(inputs)})
    assert proc.returncode == 1
    assert "missing input line: score_users" in proc.stderr
