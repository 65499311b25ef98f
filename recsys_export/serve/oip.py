"""The Open Inference Protocol (KServe v2) over HTTP, so Triton's and KServe's clients work.

Routes: ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``,
``GET /v2/models/{name}[/versions/{version}]`` (model metadata),
``.../ready`` and ``POST .../infer``.

The model takes one input tensor, ``user_ids`` (``BYTES``, ``INT64`` or ``INT32``,
shape ``[B]`` or ``[B, 1]``; an optional ``k`` tensor of one integer), and request
parameters ``k`` (default 10, or every item if fewer), ``exclude_seen`` (default
true) and ``unknown`` (``raise``, ``skip``, ``popular``); it returns ``item_ids``
(``INT64`` for integer item ids, else ``BYTES``; ``[B, k]``; empty slots ``-1`` or
``""``) and ``scores`` (``FP32`` ``[B, k]``; empty slots ``-inf``, the popularity
fallback ``NaN``). Tensors travel as
JSON ``data`` or with the binary tensor data extension (``Inference-Header-Content-
Length``), both ways, as Triton does. The version is the bundle's version.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys_export import __version__
from recsys_export.serve.engine import RecommendRequest
from recsys_export.serve.http import Call, Reply
from recsys_export.serve.schema import (
    HTTPError,
    dumps,
    finite_or_none,
    parse_json,
    recommend_options,
)

if TYPE_CHECKING:
    from recsys_export.serve.app import Server

__all__ = ["ROUTES", "decode_bytes", "encode_bytes"]

HEADER_LENGTH = b"inference-header-content-length"
_INT_TYPES = {"INT64": "<i8", "INT32": "<i4"}
_PARAMETERS = ("k", "exclude_seen", "unknown", "binary_data_output", "timeout", "priority")
_OUTPUTS = ("item_ids", "scores")


def encode_bytes(values: list[bytes]) -> bytes:
    """BYTES tensor elements in the binary extension's layout (uint32 length + bytes)."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def decode_bytes(raw: bytes, what: str) -> list[bytes]:
    """The elements of a binary BYTES tensor (HTTPError 400 if it is malformed)."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise HTTPError(400, f"{what}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise HTTPError(400, f"{what}: a BYTES element runs past the binary data")
        out.append(raw[pos : pos + size])
        pos += size
    return out


# ---------------------------------------------------------------------- metadata
def _check_model(server: Server, call: Call) -> None:
    name = call.path_params["name"]
    if name != server.config.name:
        raise HTTPError(404, f"unknown model {name!r}; this server serves {server.config.name!r}")
    version = call.path_params.get("version")
    if version is not None and version != server.model.version:
        raise HTTPError(
            404,
            f"model {name!r} has no version {version!r}; it serves version {server.model.version}",
        )


def _item_datatype(server: Server) -> str:
    return "INT64" if server.model.item_kind == "int" else "BYTES"


async def server_metadata(server: Server, call: Call) -> Reply:
    """``GET /v2``."""
    meta = {"name": "recsys-export", "version": __version__, "extensions": ["binary_tensor_data"]}
    return server.json(meta)


async def live(server: Server, call: Call) -> Reply:
    """``GET /v2/health/live``."""
    return server.json({"live": True})


async def ready(server: Server, call: Call) -> Reply:
    """``GET /v2/health/ready`` (503 while starting or shutting down)."""
    if not server.ready:
        return server.error(503, "not ready: the server is starting or shutting down")
    return server.json({"ready": True})


async def model_metadata(server: Server, call: Call) -> Reply:
    """``GET /v2/models/{name}``: the tensors of ``infer``."""
    _check_model(server, call)
    served = server.model
    meta = {
        "name": server.config.name,
        "versions": [served.version],
        "platform": f"recsys-export/{served.kind}",
        "inputs": [{"name": "user_ids", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "item_ids", "datatype": _item_datatype(server), "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        ],
        "parameters": {"k": min(10, served.n_items), "exclude_seen": True, "unknown": "raise"},
    }
    return server.json(meta, version=served.version)


async def model_ready(server: Server, call: Call) -> Reply:
    """``GET /v2/models/{name}/ready``."""
    _check_model(server, call)
    if not server.ready:
        return server.error(503, "not ready: the server is starting or shutting down")
    return server.json({"name": server.config.name, "ready": True})


# ---------------------------------------------------------------------- infer
def _split_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    if header_length is None:
        return parse_json(body), b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise HTTPError(
            400,
            f"Inference-Header-Content-Length {header_length!r} is not a length within the "
            f"{len(body)}-byte body",
        )
    n = int(header_length)
    return parse_json(body[:n]), body[n:]


def _tensor_values(tensor: dict[str, Any], binary: bytes, offset: int) -> tuple[list[Any], int]:
    """The flat values of an input tensor and the new binary offset."""
    name = tensor.get("name")
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise HTTPError(400, f"input {name!r}: shape must be a list of sizes, got {shape!r}")
    count = int(np.prod(shape)) if shape else 1
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or offset + size > len(binary):
            raise HTTPError(400, f"input {name!r}: binary_data_size {size!r} runs past the body")
        raw = binary[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            values: list[Any] = [v.decode("utf-8", "replace") for v in decode_bytes(raw, str(name))]
        elif datatype in _INT_TYPES and size % np.dtype(_INT_TYPES[datatype]).itemsize == 0:
            values = np.frombuffer(raw, dtype=_INT_TYPES[datatype]).tolist()
        else:
            raise HTTPError(400, f"input {name!r}: datatype must be BYTES, INT64 or INT32")
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise HTTPError(400, f"input {name!r} has neither data nor binary_data_size")
        values = list(_flatten(data))
        if datatype == "BYTES":
            if not all(isinstance(v, str) for v in values):
                raise HTTPError(400, f"input {name!r}: BYTES data must be strings")
        elif datatype in _INT_TYPES:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise HTTPError(400, f"input {name!r}: {datatype} data must be integers")
        else:
            raise HTTPError(400, f"input {name!r}: datatype must be BYTES, INT64 or INT32")
    if len(values) != count:
        raise HTTPError(
            400, f"input {name!r}: shape {shape} holds {count} values, {len(values)} were sent"
        )
    return values, offset


def _flatten(data: list[Any]) -> Any:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def parse_infer(body: Any, binary: bytes, max_users: int) -> tuple[RecommendRequest, dict]:
    """An infer request -> (RecommendRequest, what the response needs)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise HTTPError(400, "an infer request is a JSON object with an 'inputs' list")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise HTTPError(400, "parameters must be an object")
    extra = sorted(set(params) - set(_PARAMETERS))
    if extra:
        raise HTTPError(400, f"unknown parameter(s) {extra}; parameters: {', '.join(_PARAMETERS)}")
    tensors: dict[str, list[Any]] = {}
    offset = 0
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or tensor.get("name") not in ("user_ids", "k"):
            raise HTTPError(400, "inputs are 'user_ids' and optionally 'k'")
        tensors[tensor["name"]], offset = _tensor_values(tensor, binary, offset)
    users = tensors.get("user_ids")
    if not users:
        raise HTTPError(400, "the input 'user_ids' is missing or empty")
    if len(users) > max_users:
        raise HTTPError(413, f"user_ids has {len(users)} ids; at most {max_users} (--max-users)")
    k = params.get("k")
    if "k" in tensors:
        if len(tensors["k"]) != 1:
            raise HTTPError(400, "the input 'k' must hold one integer")
        k = tensors["k"][0]
    k, unknown, exclude_seen = recommend_options(
        k, params.get("unknown", "raise"), params.get("exclude_seen", True)
    )
    wanted = _wanted_outputs(body.get("outputs"), bool(params.get("binary_data_output", False)))
    timeout = params.get("timeout")  # Triton's: microseconds
    if timeout is not None and (
        not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1
    ):
        raise HTTPError(400, f"timeout must be a positive integer (microseconds), got {timeout!r}")
    info = {
        "id": body.get("id"),
        "outputs": wanted,
        "timeout_s": None if timeout is None else timeout / 1e6,
    }
    return RecommendRequest(users, k, exclude_seen, unknown=unknown), info


def _wanted_outputs(outputs: Any, binary_default: bool) -> dict[str, bool]:
    """Output name -> binary, in the order they are returned."""
    if outputs is None:
        return {name: binary_default for name in _OUTPUTS}
    if not isinstance(outputs, list):
        raise HTTPError(400, "outputs must be a list")
    wanted = {}
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in _OUTPUTS:
            raise HTTPError(400, f"unknown output {name!r}; outputs: {', '.join(_OUTPUTS)}")
        params = out.get("parameters") or {}
        wanted[name] = bool(params.get("binary_data", binary_default))
    return wanted


async def infer(server: Server, call: Call) -> Reply:
    """``POST /v2/models/{name}[/versions/{version}]/infer``."""
    _check_model(server, call)
    server.admit(server.recommender, call)
    body, binary = _split_body(await server.read_body(call), call.header(HEADER_LENGTH))
    req, info = parse_infer(body, binary, server.config.max_users)
    version, recs = await server.recommend(req, call, info["timeout_s"])
    items = recs.items
    if recs.int_items:
        item_type = "INT64"
        if items.dtype == object:  # empty slots hold None
            items = np.array([-1 if v is None else v for v in items.flat], dtype=np.int64)
            items = items.reshape(recs.scores.shape)
    else:
        item_type = "BYTES"
    shape = list(recs.scores.shape)
    head: dict[str, Any] = {"model_name": server.config.name, "model_version": version}
    if info["id"] is not None:
        head["id"] = info["id"]
    outputs, blobs = [], []
    for name, binary_out in info["outputs"].items():
        arr = items if name == "item_ids" else recs.scores
        datatype = item_type if name == "item_ids" else "FP32"
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary_out:
            blob = _binary(arr, datatype)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "FP32":
            out["data"] = finite_or_none(arr.reshape(-1))
        elif datatype == "BYTES":
            out["data"] = ["" if v is None else str(v) for v in arr.reshape(-1).tolist()]
        else:
            out["data"] = arr.reshape(-1).tolist()
        outputs.append(out)
    head["outputs"] = outputs
    if not blobs:
        return server.json(head, version=version)
    header = dumps(head)
    reply = server.reply(header + b"".join(blobs), 200, version, b"application/octet-stream")
    reply.header("Inference-Header-Content-Length", str(len(header)))
    return reply


def _binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "FP32":
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()
    if datatype == "INT64":
        return np.ascontiguousarray(arr, dtype="<i8").tobytes()
    return encode_bytes([b"" if v is None else str(v).encode() for v in arr.reshape(-1).tolist()])


_MODEL = "/v2/models/{name}"
_VERSION = "/v2/models/{name}/versions/{version}"
ROUTES = [
    ("GET", "/v2", server_metadata, False),
    ("GET", "/v2/health/live", live, True),
    ("GET", "/v2/health/ready", ready, True),
    ("GET", _MODEL, model_metadata, False),
    ("GET", _VERSION, model_metadata, False),
    ("GET", f"{_MODEL}/ready", model_ready, False),
    ("GET", f"{_VERSION}/ready", model_ready, False),
    ("POST", f"{_MODEL}/infer", infer, False),
    ("POST", f"{_VERSION}/infer", infer, False),
]
