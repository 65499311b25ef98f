"""The format writers: TorchScript, ``torch.export`` (``.pt2``) and ONNX graphs.

Each writer takes the frozen inference module (:mod:`recsys_export.export.frozen`) or
what the exporters made of it and writes one format's files for the bundle contract
(:mod:`recsys_export.bundle`). Torch-side only; nothing here verifies (that is
:mod:`recsys_export.parity`, which imports these writers' helpers, never the reverse).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from recsys_export import __version__
from recsys_export.bundle import FORMAT_VERSION
from recsys_export.bundle.schema import ENTRY_POINTS
from recsys_export.core.defaults import MODEL_KINDS
from recsys_export.export.frozen import (
    OnnxRecommendEntry,
    RecommendEntry,
    ScoreAllEntry,
    ScoreEntry,
)
from recsys_export.torch_runtime.io import quiet_exporters

ONNX_OPSET = 20
#: IR version written into every graph: 9 is what opset 20 needs and what onnxruntime
#: 1.17 reads (the exporter stamps 10, which onnxruntime < 1.18 refuses).
ONNX_IR_VERSION = 9
#: Protobuf's hard limit: larger ONNX models must keep weights in an external file.
ONNX_SINGLE_FILE_LIMIT = 2 * 1024**3 - 64 * 1024**2


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
#: :mod:`recsys_export.export.frozen` trace to batch-generic graphs, and that exporter takes
#: ~0.05-0.5 s per graph where the dynamo exporter takes 1-5 s (decompositions and its
#: torchlib registry). Other modules (``byom``'s generic path: Python loops over the
#: batch) go through ``torch.export`` and the dynamo exporter.
TRACED_ONNX_KINDS = MODEL_KINDS
#: Weights above this size take the dynamo exporter (it writes external data itself).
TRACED_ONNX_MAX_BYTES = 1 << 30


def _dynamo_onnx_export(program: Any, in_names: list[str], out_names: list[str]) -> Any:
    """``torch.onnx.export(dynamo=True)`` of an ExportedProgram, reusing one op registry.

    The public API rebuilds the torchlib registry on every call (~2-4 s here, most of an
    export). We build it once and call the exporter core with it; if that private entry
    point is missing or changed in the installed torch, we use the public API instead.
    """
    options: dict[str, Any] = {
        "input_names": in_names,
        "output_names": out_names,
        "opset_version": ONNX_OPSET,
        "optimize": True,
        "verify": False,
    }
    try:
        from torch.onnx._internal.exporter import _core, _registration

        if not _REGISTRY:
            _REGISTRY.append(_registration.ONNXRegistry.from_torchlib(opset_version=ONNX_OPSET))
        return _core.export(program, registry=_REGISTRY[0], **options)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other torch versions
        return torch.onnx.export(program, dynamo=True, **options)


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
