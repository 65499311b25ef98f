"""Export a checkpoint to a bundle: TorchScript, ONNX and torch.export (``.pt2``).

One function per format, all fed by the same frozen inference module
(:func:`recsys_export.inference.inference_module`) and all producing files for the same
bundle contract (:mod:`recsys_export.bundle`). :func:`export_bundle` writes them
atomically, then (by default) verifies parity and records the report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export import __version__
from recsys_export.bundle import FORMAT_VERSION, Bundle, BundleWriter
from recsys_export.checkpoint import Checkpoint
from recsys_export.errors import BundleError, CheckpointError, ConfigError
from recsys_export.inference import (
    OnnxRecommendEntry,
    RecommendEntry,
    ScoreAllEntry,
    ScoreEntry,
    inference_module,
)
from recsys_export.items import ITEM_NAMES_FILE, check_item_names
from recsys_export.manifest import ENTRY_POINTS, FORMATS, entry_point_spec

ONNX_OPSET = 20
#: IR version written into every graph: 9 is what opset 20 needs and what onnxruntime
#: 1.17 reads (the exporter stamps 10, which onnxruntime < 1.18 refuses).
ONNX_IR_VERSION = 9
REFERENCE_FILE = "reference/state_dict.pt"
#: Protobuf's hard limit: larger ONNX models must keep weights in an external file.
ONNX_SINGLE_FILE_LIMIT = 2 * 1024**3 - 64 * 1024**2


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


def _example_inputs(n_users: int, n_items: int) -> dict[str, tuple[torch.Tensor, ...]]:
    # Batches of 2+ (torch.export specialises a batch of 1 to a constant).
    users = torch.tensor([0, n_users - 1, 0], dtype=torch.int64)
    items = torch.tensor([0, n_items - 1, 0], dtype=torch.int64)
    return {
        "score": (users, items),
        "score_all": (users,),
        "recommend": (
            users,
            torch.tensor(min(2, n_items), dtype=torch.int64),
            torch.tensor([0, 1], dtype=torch.int64),
            torch.tensor([0, n_items - 1], dtype=torch.int64),
        ),
    }


def _entry_modules(module: torch.nn.Module, n_items: int) -> dict[str, torch.nn.Module]:
    return {
        "score": ScoreEntry(module),
        "score_all": ScoreAllEntry(module),
        "recommend": RecommendEntry(module, n_items),
    }


def _dynamic_shapes(entry: str) -> tuple[Any, ...]:
    batch = torch.export.Dim("batch")
    if entry == "score":
        n = torch.export.Dim("n")
        return ({0: n}, {0: n})
    if entry == "score_all":
        return ({0: batch},)
    excluded = torch.export.Dim("n_excluded")
    return ({0: batch}, None, {0: excluded}, {0: excluded})


def export_programs(module: torch.nn.Module, n_users: int, n_items: int) -> dict[str, Any]:
    """``torch.export.export`` of each entry point with dynamic batch sizes."""
    examples = _example_inputs(n_users, n_items)
    programs = {}
    with quiet_exporters():
        for entry, mod in _entry_modules(module, n_items).items():
            programs[entry] = torch.export.export(
                mod, examples[entry], dynamic_shapes=_dynamic_shapes(entry), strict=False
            )
    return programs


def write_torchscript(module: torch.nn.Module, path: Path) -> None:
    """Script the inference module (methods ``score``, ``score_all``, ``recommend``).

    TorchScript is deprecated in PyTorch; it is kept for libtorch (C++) users and its
    deprecation warnings are silenced here.
    """
    with quiet_exporters():
        scripted = torch.jit.script(module)
        # through a Python file: a failed write (full disk) is an OSError, where saving
        # to a path aborts the process from C++
        with open(path, "wb") as fh:
            torch.jit.save(scripted, fh)


def write_pt2(program: Any, path: Path) -> None:
    """Save one entry point's ``ExportedProgram`` with ``torch.export.save``."""
    # into memory, then written by Python: torch's archive writer aborts the process
    # (c10::Error in a destructor) when the disk fills up under it
    buf = io.BytesIO()
    with quiet_exporters():
        torch.export.save(program, buf)
    path.write_bytes(buf.getbuffer())


_REGISTRY: list[Any] = []

#: Model kinds whose ONNX graphs come from the TorchScript-based exporter
#: (``torch.onnx.export(dynamo=False)``): the frozen modules of
#: :mod:`recsys_export.inference` trace to batch-generic graphs, and that exporter takes
#: ~0.05-0.5 s per graph where the dynamo exporter takes 1-5 s (decompositions and its
#: torchlib registry). Other modules (``byom``'s generic path: Python loops over the
#: batch) go through ``torch.export`` and the dynamo exporter.
TRACED_ONNX_KINDS = ("mf", "densenet")
#: Weights above this size take the dynamo exporter (it writes external data itself).
TRACED_ONNX_MAX_BYTES = 1 << 30


def _dynamo_onnx_export(program: Any, in_names: list[str], out_names: list[str]) -> Any:
    """``torch.onnx.export(dynamo=True)`` of an ExportedProgram, reusing one op registry.

    The public API rebuilds the torchlib registry on every call (~2-4 s here, most of an
    export). We build it once and call the exporter core with it; if that private entry
    point is missing or changed in the installed torch, we use the public API instead.
    """
    try:
        from torch.onnx._internal.exporter import _core, _registration

        if not _REGISTRY:
            _REGISTRY.append(_registration.ONNXRegistry.from_torchlib(opset_version=ONNX_OPSET))
        return _core.export(
            program,
            registry=_REGISTRY[0],
            input_names=in_names,
            output_names=out_names,
            optimize=True,
            verify=False,
            opset_version=ONNX_OPSET,
        )
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other torch versions
        return torch.onnx.export(
            program,
            input_names=in_names,
            output_names=out_names,
            opset_version=ONNX_OPSET,
            dynamo=True,
            optimize=True,
            verify=False,
        )


def _dynamic_axes(entry: str) -> dict[str, dict[int, str]]:
    """The contract's dynamic dimensions (:data:`ENTRY_POINTS`) as ``dynamic_axes``."""
    spec = ENTRY_POINTS[entry]
    return {
        port["name"]: {d: str(name) for d, name in enumerate(port["shape"]) if name != "n_items"}
        for port in spec["inputs"] + spec["outputs"]
        if port["shape"]
    }


def _traced_onnx_export(module: torch.nn.Module, entry: str, n_users: int, n_items: int) -> Any:
    """``torch.onnx.export(dynamo=False)`` of one entry point: an ``onnx.ModelProto``."""
    import onnx

    spec = ENTRY_POINTS[entry]
    wrapper: torch.nn.Module
    if entry == "recommend":
        wrapper = OnnxRecommendEntry(module, n_items)
    else:
        wrapper = ScoreEntry(module) if entry == "score" else ScoreAllEntry(module)
    args = _example_inputs(n_users, n_items)[entry]
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            buf,
            input_names=[i["name"] for i in spec["inputs"]],
            output_names=[o["name"] for o in spec["outputs"]],
            opset_version=ONNX_OPSET,
            dynamic_axes=_dynamic_axes(entry),
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())


class OnnxSource:
    """What an entry point's ONNX graph is made from: a frozen module (traced, the fast
    exporter) or an ``ExportedProgram`` (the dynamo exporter)."""

    def __init__(
        self,
        entry: str,
        *,
        program: Any = None,
        module: torch.nn.Module | None = None,
        n_users: int = 0,
        n_items: int = 0,
    ) -> None:
        self.entry, self.program, self.module = entry, program, module
        self.n_users, self.n_items = n_users, n_items

    @property
    def traced(self) -> bool:
        return self.module is not None

    def weight_bytes(self) -> int:
        if self.module is not None:
            tensors = [*self.module.parameters(), *self.module.buffers()]
        else:
            tensors = [*self.program.state_dict.values()]
            tensors += [t for t in self.program.constants.values() if isinstance(t, torch.Tensor)]
        return sum(int(t.numel()) * t.element_size() for t in tensors)


def onnx_sources(
    module: torch.nn.Module,
    kind: str,
    n_users: int,
    n_items: int,
    programs: dict[str, Any] | None,
) -> dict[str, OnnxSource]:
    """Per entry point, what :func:`write_onnx` converts (see :data:`TRACED_ONNX_KINDS`)."""
    traced = kind in TRACED_ONNX_KINDS
    if traced:
        size = OnnxSource("score", module=module).weight_bytes()
        traced = size <= TRACED_ONNX_MAX_BYTES
    if traced:
        return {
            e: OnnxSource(e, module=module, n_users=n_users, n_items=n_items) for e in ENTRY_POINTS
        }
    if programs is None:
        programs = export_programs(module, n_users, n_items)
    return {e: OnnxSource(e, program=p) for e, p in programs.items()}


def write_onnx(
    source: Any,
    entry: str,
    path: Path,
    *,
    model_kind: str,
    external_data: bool | None = None,
) -> list[Path]:
    """Convert one entry point to ONNX (opset 20, IR 9) and check it.

    Parameters
    ----------
    source : OnnxSource or ExportedProgram
        A frozen module to trace (the TorchScript-based exporter) or an
        ``ExportedProgram`` (the dynamo exporter).
    external_data : bool, optional
        Keep weights in ``<file>.data`` beside the graph. None decides by size: models
        over protobuf's 2 GB limit need it; smaller ones are one self-contained file.

    Returns
    -------
    list of Path
        The files written (the graph, plus the external data file if any).
    """
    import onnx

    if not isinstance(source, OnnxSource):
        source = OnnxSource(entry, program=source)
    spec = ENTRY_POINTS[entry]
    in_names = [i["name"] for i in spec["inputs"]]
    out_names = [o["name"] for o in spec["outputs"]]
    weight_bytes = source.weight_bytes()
    if external_data is None:
        external_data = weight_bytes > ONNX_SINGLE_FILE_LIMIT
    props = {
        "recsys_export.model_kind": model_kind,
        "recsys_export.entry_point": entry,
        "recsys_export.bundle_format_version": str(FORMAT_VERSION),
        "recsys_export.version": __version__,
    }
    data_file = path.with_name(path.name + ".data")
    if source.traced:
        assert source.module is not None
        with quiet_exporters():
            proto = _traced_onnx_export(source.module, entry, source.n_users, source.n_items)
        proto.ir_version = ONNX_IR_VERSION
        onnx.helper.set_model_props(proto, props)
        if external_data:
            onnx.save_model(
                proto,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_file.name,
                size_threshold=0,
            )
        else:
            onnx.save_model(proto, str(path))
    else:
        with quiet_exporters():
            onnx_program = _dynamo_onnx_export(source.program, in_names, out_names)
        onnx_program.model.ir_version = ONNX_IR_VERSION
        onnx_program.model.metadata_props.update(props)
        with quiet_exporters():
            onnx_program.save(str(path), external_data=external_data)
    written = [path]
    if data_file.exists():
        written.append(data_file)
    # Full check (shape inference included); on the path so external data is found.
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    got_in = [i.name for i in graph.input]
    got_out = [o.name for o in graph.output]
    if got_in != in_names or got_out != out_names:  # pragma: no cover - exporter regression
        raise RuntimeError(
            f"ONNX {entry}: names {got_in}->{got_out}, expected {in_names}->{out_names}"
        )
    return written


def _seen_csr(ckpt: Checkpoint) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ckpt.seen_items, ckpt.seen_users))
    users, items = ckpt.seen_users[order], ckpt.seen_items[order]
    indptr = np.zeros(ckpt.model.n_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(users, minlength=ckpt.model.n_users))
    return indptr, items.astype(np.int64)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _check_finite(ckpt: Checkpoint) -> None:
    for name, tensor in ckpt.model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"refusing to export: weight {name} holds NaN or infinite values; retrain"
            )


def _item_names(ckpt: Checkpoint) -> list[str | None] | None:
    """The checkpoint's item names, validated against the model's item count."""
    if ckpt.item_names is None:
        return None
    try:
        return check_item_names(ckpt.item_names, ckpt.model.n_items)
    except ValueError as exc:
        raise CheckpointError(f"refusing to export: {exc}") from None


@contextlib.contextmanager
def _disk_errors(out: str | Path) -> Iterator[None]:
    """Turn an OSError while writing the bundle (a full disk) into a :class:`BundleError`.

    Enter it outside the :class:`BundleWriter` so that the temporary directory is
    removed first.
    """
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BundleError(
            f"cannot write bundle {out}: {reason}"
            + (f" ({exc.filename})" if exc.filename else "")
            + "; nothing was written, free some space or choose another --out"
        ) from None


def parse_formats(formats: str | Sequence[str] | None) -> list[str]:
    """Validate a format list (``"onnx,torchscript,pt2"`` or a sequence)."""
    if formats is None:
        return list(FORMATS)
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    items = [f for f in items if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ConfigError(
            f"unknown export format(s) {unknown or items}; choose from {', '.join(FORMATS)}"
        )
    return [f for f in FORMATS if f in items]


def export_bundle(
    ckpt: Checkpoint,
    out: str | Path,
    *,
    formats: str | Sequence[str] | None = None,
    overwrite: bool = False,
    external_data: bool | None = None,
    verify: bool = True,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    budget: int | None = None,
    full: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint to a bundle directory, atomically, and verify it.

    Parameters
    ----------
    ckpt : Checkpoint
        The trained model with its id maps and seen items.
    out : path
        Bundle directory to create (written to a temporary sibling, then renamed).
    formats : str or sequence, optional
        Subset of ``onnx``, ``torchscript``, ``pt2`` (default: all).
    overwrite : bool
        Replace an existing bundle at ``out``.
    external_data : bool, optional
        Force (True) or forbid (False) ONNX external weight files; None decides by size.
    verify : bool
        Run the parity checks (:mod:`recsys_export.parity`, the torch-free runtime
        included) on the staged bundle and record ``parity.json``. On a failure
        :class:`ParityError` is raised before the bundle is moved into place: nothing
        that fails parity is left behind, and an existing bundle at ``out`` is kept.
    budget : int, optional
        Pair budget of the verification plan (:func:`recsys_export.parity.plan_parity`):
        the whole matrix while ``n_users * n_items`` fits it, a recorded sample beyond.
    full : bool
        Verify every user's whole row whatever the budget.

    Returns
    -------
    dict
        The manifest as written (``files`` with checksums included), with
        ``export_seconds`` per format under ``timings`` and, when verified, the ``parity``
        summary.
    """
    from recsys_export.parity import check_tolerances

    check_tolerances(atol, rtol)
    fmts = parse_formats(formats)
    _check_finite(ckpt)
    if verify and budget is not None:
        from recsys_export.plan import check_budget

        check_budget(budget)  # a user error before anything is written
    model = ckpt.model.eval()
    module = inference_module(model)
    n_users, n_items = model.n_users, model.n_items
    timings: dict[str, float] = {}
    files: dict[str, dict[str, Any]] = {}
    with _disk_errors(out), BundleWriter(out, overwrite=overwrite) as writer:
        writer.write_id_maps(ckpt.user_map, ckpt.item_map)
        names = _item_names(ckpt)
        if names is not None:
            writer.write_json(ITEM_NAMES_FILE, names, "item_names")
        indptr, seen = _seen_csr(ckpt)
        writer.write_bytes("ids/seen_indptr.npy", _npy_bytes(indptr), "seen:indptr")
        writer.write_bytes("ids/seen_items.npy", _npy_bytes(seen), "seen:items")
        # The eager reference (weights only) makes `verify` work from the bundle alone.
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        buf = io.BytesIO()  # torch.save to a file raises RuntimeError, not OSError, on a full disk
        torch.save(state, buf)
        writer.write_bytes(REFERENCE_FILE, buf.getvalue(), "reference:state_dict")
        programs = None
        if "pt2" in fmts:
            t0 = time.perf_counter()
            programs = export_programs(module, n_users, n_items)
            timings["torch.export"] = time.perf_counter() - t0
        if "torchscript" in fmts:
            t0 = time.perf_counter()
            rel = "torchscript/model.pt"
            write_torchscript(module, writer.path(rel))
            writer.add(rel, "torchscript:module")
            files["torchscript"] = {"module": rel, "methods": list(ENTRY_POINTS)}
            timings["torchscript"] = time.perf_counter() - t0
        if "pt2" in fmts:
            assert programs is not None
            t0 = time.perf_counter()
            files["pt2"] = {}
            for entry, program in programs.items():
                rel = f"pt2/{entry}.pt2"
                write_pt2(program, writer.path(rel))
                writer.add(rel, f"pt2:{entry}")
                files["pt2"][entry] = rel
            timings["pt2"] = time.perf_counter() - t0
        if "onnx" in fmts:
            t0 = time.perf_counter()
            files["onnx"] = {}
            sources = onnx_sources(module, model.kind, n_users, n_items, programs)
            for entry, source in sources.items():
                rel = f"onnx/{entry}.onnx"
                written = write_onnx(
                    source,
                    entry,
                    writer.path(rel),
                    model_kind=model.kind,
                    external_data=external_data,
                )
                writer.add(rel, f"onnx:{entry}")
                for extra in written[1:]:
                    writer.add(f"onnx/{extra.name}", f"onnx-data:{entry}")
                files["onnx"][entry] = rel
            files["onnx_kernels"] = write_kernels(
                module, model.kind, writer, external_data=external_data
            )
            timings["onnx"] = time.perf_counter() - t0
        manifest = build_manifest(ckpt, files, timings)
        if verify:
            from recsys_export.parity import verify_staged_bundle

            report = verify_staged_bundle(
                writer,
                manifest,
                ckpt,
                atol=atol,
                rtol=rtol,
                budget=budget,
                full=full,
                progress=progress,
            )
            manifest["parity"] = report.summary()
            writer.write_json("parity.json", report.to_dict(), "parity:report")
            if not report.passed:
                report.raise_failure()  # leaving the block deletes the staged bundle
        dest = writer.commit(manifest)
    return Bundle.load(dest, verify=False).manifest


def build_manifest(
    ckpt: Checkpoint, files: dict[str, Any], timings: dict[str, float]
) -> dict[str, Any]:
    """Manifest keys owned by the exporter (the bundle writer adds files and checksums)."""
    import onnx
    import onnxruntime

    model = ckpt.model
    formats: dict[str, Any] = {}
    if "onnx" in files:
        formats["onnx"] = {"opset": ONNX_OPSET, "graphs": files["onnx"]}
        if files.get("onnx_kernels"):
            # optional fast paths for the runtime (older bundles lack them)
            formats["onnx"]["kernels"] = files["onnx_kernels"]
    if "torchscript" in files:
        formats["torchscript"] = files["torchscript"]
    if "pt2" in files:
        formats["pt2"] = {"programs": files["pt2"]}
    return {
        "model": {
            "kind": model.kind,
            "hyperparameters": model.hyperparameters(),
            "n_users": model.n_users,
            "n_items": model.n_items,
        },
        "entry_points": entry_point_spec(model.n_items),
        "formats": formats,
        "seen": {"indptr": "ids/seen_indptr.npy", "items": "ids/seen_items.npy"},
        "item_names": ITEM_NAMES_FILE if ckpt.item_names is not None else None,
        "reference": {"state_dict": REFERENCE_FILE},
        "versions": {
            "recsys_export": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "training": {"config": ckpt.config, "metrics": ckpt.metrics, "data": ckpt.data},
        "timings": {"export_seconds": {k: round(v, 3) for k, v in timings.items()}},
        "parity": None,
    }


# --------------------------------------------------------------------------- kernels
#: Version of the optional fast-path graphs under ``formats.onnx.kernels``.
KERNELS_VERSION = 2
KERNELS_DIR = "onnx/kernels"
#: DenseNet ``score_all`` kernel: users per call the runtime sends, and the bytes of one
#: ``[users, hidden, items]`` intermediate a tile may take. 8 x 128 x 512 floats = 2 MB
#: measured fastest on 2 cores (8 MB L3, 512 KB L2 per core); 4 MB tiles thrash L3 once
#: both cores run, 16 MB is slower even on one.
DN_BLOCK_USERS = 8
DN_TILE_BYTES = 2 << 20
#: Upper bound on tiles per graph (two nodes each): wide catalogues get wider tiles.
DN_MAX_TILES = 512


def dn_tile_width(hidden: int, n_items: int, users: int) -> int:
    """Items per DenseNet tile so ``users x hidden x width`` floats fit ``DN_TILE_BYTES``."""
    width = max(64, DN_TILE_BYTES // (4 * max(1, hidden) * max(1, users)))
    width = max(width, -(-n_items // DN_MAX_TILES))
    return int(min(width, n_items))


def _dn_item_tiles(neg_c_t: np.ndarray, width: int) -> tuple[list[Any], list[Any]]:
    """Nodes ``a3[B, H, 1] -> y[B, N]`` over item tiles of ``width``, and their weights.

    Each tile is ``Max(a3, -C^T tile) -> MatMul(w2 row) -> [B, 1, T]``; onnxruntime's
    planner reuses one intermediate buffer for every tile, so it stays in cache, and the
    whole row costs one session call instead of one per tile.
    """
    from onnx import helper, numpy_helper

    nodes, inits, parts = [], [], []
    for k, t0 in enumerate(range(0, neg_c_t.shape[1], width)):
        tile = np.ascontiguousarray(neg_c_t[:, t0 : t0 + width])
        inits.append(numpy_helper.from_array(tile, f"neg_c_t_{k}"))
        nodes.append(helper.make_node("Max", ["a3", f"neg_c_t_{k}"], [f"m_{k}"]))
        nodes.append(helper.make_node("MatMul", ["w2_row", f"m_{k}"], [f"y3_{k}"]))
        parts.append(f"y3_{k}")
    if len(parts) == 1:
        nodes.append(helper.make_node("Squeeze", [parts[0], "axis1"], ["y"]))
    else:
        nodes.append(helper.make_node("Concat", parts, ["y3"], axis=2))
        nodes.append(helper.make_node("Squeeze", ["y3", "axis1"], ["y"]))
    return nodes, inits


def _kernel_model(
    nodes: list[Any], name: str, inputs: list[Any], outputs: list[Any], inits: list[Any], kind: str
) -> Any:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="recsys_export"
    )
    model.ir_version = ONNX_IR_VERSION
    helper.set_model_props(
        model,
        {
            "recsys_export.model_kind": kind,
            "recsys_export.kernel": name,
            "recsys_export.version": __version__,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build_kernels(module: torch.nn.Module, kind: str) -> dict[str, Any]:
    """Internal fast-path graphs (and item-side arrays) for the runtime.

    They are not entry points: the runtime uses them when the manifest lists them under
    ``formats.onnx.kernels`` and falls back to the contract graphs otherwise.

    * ``topk``: ``scores float32[B, N], k int64[1] -> values float32[B, k], indices int64``
      (the runtime writes ``-inf`` at excluded positions before calling it).
    * ``recommend_one``: ``users int64[1], k int64[1], exclude_items int64[M] ->
      scores float32[1, k], items int64[1, k]`` (one user, one call; ``-1`` in empty slots).
    * MF ``score_all``: ``users int64[B] -> scores float32[B, N]``, one MatMul of augmented
      factors ``[P, bu, 1] x [Q, 1, bi + mu]^T``.
    * DenseNet ``score_all``: ``users int64[B] -> scores float32[B, N]``: the user half
      ``a = P[u] Wu^T``, then item tiles of :func:`dn_tile_width` items, each ``Max(a,
      -C^T tile)`` and ``MatMul`` with the ``w2`` row in ``[B, H, T]`` layout, plus the
      precomputed item term. Its ``recommend_one`` uses the same tiles sized for one user.

    Returns
    -------
    dict
        name -> ``onnx.ModelProto``.
    """
    from onnx import TensorProto, helper, numpy_helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    node = helper.make_node

    def init(arr: np.ndarray, name: str) -> Any:
        return numpy_helper.from_array(np.ascontiguousarray(arr), name)

    def buf(name: str) -> np.ndarray:
        return getattr(module, name).detach().cpu().numpy().astype(np.float32)

    out: dict[str, Any] = {}
    neg_inf = np.array([-np.inf], dtype=np.float32)
    minus_one = np.array([-1], dtype=np.int64)
    topk_tail = [
        node("TopK", ["masked", "k"], ["scores", "idx"], axis=1, largest=1, sorted=1),
        node("IsInf", ["scores"], ["empty"], detect_positive=0),
        node("Where", ["empty", "minus_one", "idx"], ["items"]),
    ]
    out["topk"] = _kernel_model(
        [node("TopK", ["scores", "k"], ["values", "indices"], axis=1, largest=1, sorted=1)],
        "topk",
        [vi("scores", f32, ["batch", "n"]), vi("k", i64, [1])],
        [vi("values", f32, ["batch", "k"]), vi("indices", i64, ["batch", "k"])],
        [],
        kind,
    )
    one_inputs = [vi("users", i64, [1]), vi("k", i64, [1]), vi("exclude_items", i64, ["m"])]
    one_outputs = [vi("scores", f32, [1, "k"]), vi("items", i64, [1, "k"])]
    scatter = [
        node("Unsqueeze", ["exclude_items", "axis0"], ["ex2"]),
        node("Shape", ["ex2"], ["ex_shape"]),
        node("Expand", ["neg_inf", "ex_shape"], ["ex_vals"]),
        node("ScatterElements", ["row", "ex2", "ex_vals"], ["masked"], axis=1),
    ]
    common = [
        init(neg_inf, "neg_inf"),
        init(minus_one, "minus_one"),
        init(np.array([0], dtype=np.int64), "axis0"),
    ]
    if kind == "mf":
        p, q = buf("user_factors"), buf("item_factors")
        bu, bi = buf("user_bias"), buf("item_bias")
        pa = np.concatenate([p, bu[:, None], np.ones((p.shape[0], 1), np.float32)], axis=1)
        qa_t = np.concatenate([q, np.ones((q.shape[0], 1), np.float32), bi[:, None]], axis=1).T
        gather = node("Gather", ["user_aug", "users"], ["x"], axis=0)
        weights = [init(pa, "user_aug"), init(qa_t, "item_aug_t")]
        out["score_all"] = _kernel_model(
            [gather, node("MatMul", ["x", "item_aug_t"], ["scores"])],
            "mf_score_all",
            [vi("users", i64, ["batch"])],
            [vi("scores", f32, ["batch", q.shape[0]])],
            weights,
            kind,
        )
        out["recommend_one"] = _kernel_model(
            [gather, node("MatMul", ["x", "item_aug_t"], ["row"]), *scatter, *topk_tail],
            "mf_recommend_one",
            one_inputs,
            one_outputs,
            [*weights, *common],
            kind,
        )
    else:
        p, w1u_t, w2_row = buf("user_factors"), buf("w1_user_t"), buf("w2_row")
        neg_c_t, offset = buf("neg_c_t"), buf("item_offset")
        hidden, n_items = neg_c_t.shape
        user_half = [
            node("Gather", ["user_factors", "users"], ["p"], axis=0),
            node("MatMul", ["p", "w1_user_t"], ["a"]),
            node("Unsqueeze", ["a", "axis2"], ["a3"]),  # [B, H, 1]
        ]
        shared = [
            init(p, "user_factors"),
            init(w1u_t, "w1_user_t"),
            init(w2_row, "w2_row"),
            init(offset, "item_offset"),
            init(np.array([2], dtype=np.int64), "axis2"),
            init(np.array([1], dtype=np.int64), "axis1"),
        ]
        width = dn_tile_width(hidden, n_items, DN_BLOCK_USERS)
        rows_nodes, rows_inits = _dn_item_tiles(neg_c_t, width)
        out["score_all"] = _kernel_model(
            [*user_half, *rows_nodes, node("Add", ["y", "item_offset"], ["scores"])],
            "densenet_score_all",
            [vi("users", i64, ["batch"])],
            [vi("scores", f32, ["batch", n_items])],
            [*shared, *rows_inits],
            kind,
        )
        one_nodes, one_inits = _dn_item_tiles(neg_c_t, dn_tile_width(hidden, n_items, 1))
        out["recommend_one"] = _kernel_model(
            [
                *user_half,
                *one_nodes,
                node("Add", ["y", "item_offset"], ["row"]),
                *scatter,
                *topk_tail,
            ],
            "densenet_recommend_one",
            one_inputs,
            one_outputs,
            [*shared, *one_inits, *common],
            kind,
        )
    return out


def write_kernels(
    module: torch.nn.Module, kind: str, writer: BundleWriter, *, external_data: bool | None
) -> dict[str, Any]:
    """Write :func:`build_kernels` into ``onnx/kernels/`` and return the manifest entry."""
    import onnx

    if kind not in ("mf", "densenet"):  # other models (byom's generic path): no fast paths
        return {}
    entry: dict[str, Any] = {"version": KERNELS_VERSION}
    if kind == "densenet":
        entry["block_users"] = DN_BLOCK_USERS  # what the score_all tiles are sized for
    for name, obj in build_kernels(module, kind).items():
        rel = f"{KERNELS_DIR}/{name}.onnx"
        path = writer.add(rel, f"onnx-kernel:{name}")
        size = sum(len(t.raw_data) for t in obj.graph.initializer)
        ext = external_data if external_data is not None else size > ONNX_SINGLE_FILE_LIMIT
        if ext:
            onnx.save_model(
                obj,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=f"{name}.onnx.data",
            )
            if path.with_name(f"{name}.onnx.data").exists():  # small graphs stay inline
                writer.add(f"{KERNELS_DIR}/{name}.onnx.data", f"onnx-kernel-data:{name}")
        else:
            onnx.save_model(obj, str(path))
        entry[name] = rel
    return entry
