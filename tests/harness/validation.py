"""What tritonserver 2.51 checks before a request reaches the model, with its messages.

Mirrors core's InferenceRequest::Normalize (infer_request.cc, r24.10), in its order, so the
first problem reported is the one a client reads:
  1. requested outputs must exist;
  2. the NUMBER of inputs must lie between the required count and the total: the names are not
     checked here, so with an optional input in the config a request that lacks a required
     input but carries an optional one reaches execute();
  3. every input must exist, have a batch dimension (max_batch_size > 0), and the same batch
     size as the others; the batch size must be <= max_batch_size;
  4. every input's data type and shape must match the config.
The server walks a request's inputs in its hash map's order, which for a few inputs is the
reverse of the order they were added; the messages that list inputs follow that order.

Also here: `check_batch`, the dynamic batcher's rules for which requests share an execute().
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod

import numpy as np
from tritonclient.grpc import model_config_pb2

from tests.harness.errors import ServerRejected, UnrealisticBatch

# config data_type -> what clients and server messages call it, and the numpy type the model gets
PROTOCOL = {
    "TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_UINT16": "UINT16", "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64", "TYPE_INT8": "INT8", "TYPE_INT16": "INT16", "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64", "TYPE_FP16": "FP16", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES", "TYPE_BF16": "BF16",
}  # fmt: skip
NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}  # fmt: skip


def client_datatype(name: str, array: np.ndarray) -> str:
    """The datatype tritonclient sends for a numpy array (str arrays sent as BYTES, UTF-8)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for datatype, numpy_type in NUMPY.items():
        if array.dtype == numpy_type:
            return datatype
    raise TypeError(f"input '{name}': tritonclient cannot send numpy dtype {array.dtype}")


def _dims(values: Sequence[int]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def check_request(
    config: model_config_pb2.ModelConfig,
    inputs: Mapping[str, np.ndarray],
    requested_outputs: Sequence[str],
    request_id: str = "",
) -> None:
    """Raise ServerRejected with the server's message if it would refuse this request."""
    model = config.name
    prefix = f"[request id: {request_id or '<id_unknown>'}] "
    outputs = {o.name for o in config.output}
    for name in requested_outputs:
        if name not in outputs:
            raise ServerRejected(f"unexpected inference output '{name}' for model '{model}'")
    declared = {i.name: i for i in config.input}
    required = [i.name for i in config.input if not i.optional]
    if not len(required) <= len(inputs) <= len(declared):
        raise ServerRejected(prefix + _count_message(config, inputs, required))
    order = list(reversed(list(inputs)))  # the server's unordered_map order
    batching = config.max_batch_size > 0
    batch_size = 0
    for name in order:
        if name not in declared:
            raise ServerRejected(f"unexpected inference input '{name}' for model '{model}'")
        shape = np.shape(inputs[name])
        if not batching:
            continue
        if len(shape) == 0:
            raise ServerRejected(
                prefix + f"input '{name}' has no shape but model requires batch dimension "
                f"for '{model}'"
            )
        if batch_size == 0:
            batch_size = shape[0]
        elif shape[0] != batch_size:
            raise ServerRejected(
                prefix + f"input '{name}' batch size does not match other inputs for '{model}'"
            )
    if batch_size > config.max_batch_size:
        raise ServerRejected(
            prefix + f"inference request batch-size must be <= {config.max_batch_size} "
            f"for '{model}'"
        )
    for name in order:
        _check_input(config, declared[name], np.asarray(inputs[name]), batch_size, prefix)


def _count_message(
    config: model_config_pb2.ModelConfig, inputs: Mapping[str, np.ndarray], required: list[str]
) -> str:
    missing = [n for n in required if n not in inputs]
    # The server builds these lists by dropping a trailing comma, so with nothing missing
    # what is left of "[" is dropped instead: "... missing required input(s) ]".
    missing_text = ("[" + ",".join(f"'{n}'" for n in missing)) if missing else ""
    got = "[" + ",".join(f"'{n}'" for n in reversed(list(inputs))) + "]"
    total, model = len(config.input), config.name
    head = (
        f"expected {total} inputs"
        if total == len(required)
        else f"expected number of inputs between {len(required)} and {total}"
    )
    return (
        f"{head} but got {len(inputs)} inputs for model '{model}'. Got input(s) {got}, but "
        f"missing required input(s) {missing_text}]. Please provide all required input(s)."
    )


def _check_input(
    config: model_config_pb2.ModelConfig,
    spec: model_config_pb2.ModelInput,
    array: np.ndarray,
    batch_size: int,
    prefix: str,
) -> None:
    model, name = config.name, spec.name
    expected = PROTOCOL[model_config_pb2.DataType.Name(spec.data_type)]
    sent = client_datatype(name, array)
    if sent != expected:
        raise ServerRejected(
            prefix + f"inference input '{name}' data-type is '{sent}', but model '{model}' "
            f"expects '{expected}'"
        )
    original = list(array.shape)
    shape = original[1:] if config.max_batch_size > 0 else original
    dims = list(spec.dims)
    if len(dims) != len(shape) or any(d not in (-1, s) for d, s in zip(dims, shape, strict=True)):
        note = ""
        full = dims
        if config.max_batch_size > 0:
            full = [-1, *dims]
            note = (
                "NOTE: Setting a non-zero max_batch_size in the model config requires a batch "
                "dimension to be prepended to each input shape. If you want to specify the full "
                "shape including the batch dim in your input dims config, try setting "
                "max_batch_size to zero. See the model configuration docs for more info on "
                "max_batch_size."
            )
        raise ServerRejected(
            prefix + f"unexpected shape for input '{name}' for model '{model}'. Expected "
            f"{_dims(full)}, got {_dims(original)}. {note}"
        )
    # A batch of 0 rows is taken as "no batch dimension": the element count is then checked
    # against the shape without its first dimension.
    with_batch = shape if batch_size == 0 else [batch_size, *shape]
    elements = prod(with_batch)
    if expected == "BYTES" and array.size != elements:
        if array.size > elements:
            raise ServerRejected(
                prefix + f"unexpected number of string elements {elements + 1} for inference "
                f"input '{name}' for model '{model}', expecting {elements}"
            )
        raise ServerRejected(
            prefix + f"expected {elements} string elements for inference input '{name}' for "
            f"model '{model}', got {array.size}"
        )
    if expected != "BYTES" and array.nbytes != elements * array.itemsize:
        raise ServerRejected(
            prefix + f"input byte size mismatch for input '{name}' for model '{model}'. "
            f"Expected {elements * array.itemsize}, got {array.nbytes}"
        )


def check_batch(
    config: model_config_pb2.ModelConfig, batch: Sequence[Mapping[str, np.ndarray]]
) -> None:
    """Raise UnrealisticBatch unless the server could hand these requests to one execute()."""
    if len(batch) <= 1:
        return
    has_batcher = config.HasField("dynamic_batching") or config.HasField("sequence_batching")
    if config.max_batch_size == 0 or not has_batcher:
        raise UnrealisticBatch(
            f"model '{config.name}' has max_batch_size {config.max_batch_size} and "
            f"{'a batcher' if has_batcher else 'no dynamic_batching'}: the server runs each "
            f"request alone, not {len(batch)} in one execute()"
        )
    rows = sum(int(np.shape(next(iter(inputs.values())))[0]) for inputs in batch if inputs)
    if rows > config.max_batch_size:
        raise UnrealisticBatch(
            f"{rows} rows in one execute(): the dynamic batcher never exceeds "
            f"max_batch_size {config.max_batch_size}"
        )
    if any(i.optional for i in config.input):
        names = [sorted(inputs) for inputs in batch]
        if any(n != names[0] for n in names):
            raise UnrealisticBatch(
                "with optional inputs in the config, the dynamic batcher only batches requests "
                f"that carry the same inputs; got {names}. Pass enforce_batcher=False to run "
                "such a batch anyway (say, to test per-request error handling)"
            )
