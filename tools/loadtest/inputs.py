"""perf_analyzer's input data, and client tensors, from a model's config and content samples.

Every name, data type and shape comes from the model's config (read from the server, or from
config.pbtxt through Triton's own protobuf schema), never from a per-model table: a sample's
value for an input the config lacks is dropped, a required input without content is an error.

perf_analyzer's JSON data format (one stream of steps, one step per sample): a BYTES tensor is
`{"b64": base64(serialized tensor), "shape": [...]}`, where the serialized tensor is every
element as a 4-byte little-endian length followed by its bytes; other types are
`{"content": [flat values], "shape": [...]}`. Shapes leave out the batch dimension when the
model batches (max_batch_size > 0): perf_analyzer adds it (-b).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig, ModelInput

from .content import Sample

#: Config data types -> numpy dtypes (TYPE_STRING is BYTES: numpy object arrays of bytes).
NUMPY = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


def read_config(model_dir: Path) -> ModelConfig:
    """config.pbtxt through Triton's schema (an unknown field is an error, as in the server);
    the name defaults to the directory's, as the server fills it in."""
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    config = text_format.Parse(text, ModelConfig())
    if not config.name:
        config.name = model_dir.name
    return config


def type_name(tensor: ModelInput) -> str:
    return DataType.Name(tensor.data_type)


def is_decoupled(config: ModelConfig) -> bool:
    return bool(config.model_transaction_policy.decoupled)


def _elements(tensor: ModelInput, value: Any) -> np.ndarray:
    """One sample's value as an array of the input's type, without the batch dimension."""
    kind = type_name(tensor)
    if kind not in NUMPY:
        raise ValueError(f"input {tensor.name!r}: data type {kind} is not supported")
    if kind == "TYPE_STRING":
        items = value if isinstance(value, list | tuple) else [value]
        encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in items]
        array = np.empty(len(encoded), dtype=np.object_)
        array[:] = encoded
        if not isinstance(value, list | tuple):
            array = array.reshape(1)
    else:
        array = np.atleast_1d(np.asarray(value, dtype=NUMPY[kind]))
    dims = list(tensor.dims)
    if len(dims) > 1:
        # Content for multi-dimensional inputs comes already shaped (nested lists).
        array = array.reshape([d if d > 0 else -1 for d in dims])
    return array


def _check_shape(tensor: ModelInput, shape: Sequence[int]) -> None:
    dims = list(tensor.dims)
    if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape, strict=True)):
        raise ValueError(
            f"input {tensor.name!r}: shape {list(shape)} does not fit the config's dims {dims}"
        )


def sample_arrays(config: ModelConfig, sample: Sample) -> dict[str, np.ndarray]:
    """The sample's tensors for this model, without the batch dimension, in config order."""
    arrays = {}
    for tensor in config.input:
        if tensor.name not in sample.inputs:
            if not tensor.optional:
                raise ValueError(
                    f"model {config.name!r} requires input {tensor.name!r}, which its content "
                    f"generator does not provide (it gives: {', '.join(sorted(sample.inputs))})"
                )
            continue
        array = _elements(tensor, sample.inputs[tensor.name])
        if array.size == 0 and tensor.optional:
            continue  # "zero images": leave the optional input out
        _check_shape(tensor, array.shape)
        arrays[tensor.name] = array
    return arrays


def client_tensors(config: ModelConfig, sample: Sample) -> dict[str, np.ndarray]:
    """The tensors a client sends for one sample: with a batch dimension of 1 if the model
    batches (tritonclient, the in-process harness)."""
    batched = config.max_batch_size > 0
    return {
        name: array[np.newaxis] if batched else array
        for name, array in sample_arrays(config, sample).items()
    }


def serialize_bytes(array: np.ndarray) -> bytes:
    """Triton's BYTES wire format: every element as <uint32 little-endian length><bytes>."""
    return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))


def build_data(config: ModelConfig, samples: Sequence[Sample]) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON: one step per sample, the same inputs in every step."""
    if not samples:
        raise ValueError("no samples to build input data from")
    steps = []
    for sample in samples:
        step = {}
        for name, array in sample_arrays(config, sample).items():
            shape = list(array.shape)
            if array.dtype == np.object_:
                step[name] = {
                    "b64": base64.b64encode(serialize_bytes(array)).decode(),
                    "shape": shape,
                }
            else:
                step[name] = {"content": array.reshape(-1).tolist(), "shape": shape}
        steps.append(step)
    names = [sorted(step) for step in steps]
    if any(n != names[0] for n in names):
        raise ValueError(
            f"model {config.name!r}: every sample must fill the same inputs (perf_analyzer "
            f"sends one set); got {sorted({tuple(n) for n in names})}"
        )
    return {"data": steps}


def write_data(config: ModelConfig, samples: Sequence[Sample], path: Path) -> Path:
    data = build_data(config, samples)
    validate_data(config, data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _decode_bytes_tensor(blob: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise ValueError("truncated length prefix")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise ValueError(f"element of {length} bytes runs past the end")
        items.append(blob[offset : offset + length])
        offset += length
    return items


def validate_data(config: ModelConfig, data: dict[str, Any]) -> None:
    """Check perf_analyzer input data against the model's config as the server would: every
    name declared, every required input present, types and shapes matching the dims, every
    BYTES tensor well-formed with as many elements as its shape says. Raises ValueError."""
    declared = {tensor.name: tensor for tensor in config.input}
    steps = data.get("data")
    if not isinstance(steps, list) or not steps:
        raise ValueError("input data needs a non-empty 'data' list of steps")
    for index, step in enumerate(steps):
        where = f"model {config.name!r}, step {index}"
        unknown = set(step) - set(declared)
        if unknown:
            raise ValueError(f"{where}: inputs {sorted(unknown)} are not in the config")
        missing = [n for n, t in declared.items() if not t.optional and n not in step]
        if missing:
            raise ValueError(f"{where}: required inputs {missing} are missing")
        for name, entry in step.items():
            tensor = declared[name]
            shape = entry.get("shape")
            if not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
                raise ValueError(f"{where}: input {name!r} needs an integer 'shape' list")
            _check_shape(tensor, shape)
            count = math.prod(shape)
            kind = type_name(tensor)
            if kind == "TYPE_STRING":
                if "b64" not in entry:
                    raise ValueError(f"{where}: BYTES input {name!r} must be given as 'b64'")
                try:
                    items = _decode_bytes_tensor(base64.b64decode(entry["b64"], validate=True))
                except ValueError as exc:
                    raise ValueError(f"{where}: input {name!r}: bad BYTES tensor: {exc}") from exc
                if len(items) != count:
                    raise ValueError(
                        f"{where}: input {name!r} holds {len(items)} elements, shape says {count}"
                    )
                continue
            content = entry.get("content")
            if not isinstance(content, list) or len(content) != count:
                raise ValueError(f"{where}: input {name!r} needs {count} values in 'content'")
            expected = bool if kind == "TYPE_BOOL" else float if "FP" in kind else int
            for value in content:
                ok = (
                    isinstance(value, bool)
                    if expected is bool
                    else (
                        isinstance(value, int | float) and not isinstance(value, bool)
                        if expected is float
                        else isinstance(value, int) and not isinstance(value, bool)
                    )
                )
                if not ok:
                    raise ValueError(f"{where}: input {name!r} ({kind}) got {value!r}")
