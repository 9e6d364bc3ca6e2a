"""Request inputs to Python values, Python values to output tensors.

Every reader checks what it reads (shape, size, encoding) and raises `RequestError` naming the
input and the limit, so a bad input fails only its own request. Inputs of dims [1] carry one
value per row; inputs of dims [-1] (`list_column`) carry a variable count per row: a request of
R rows sends an [R, N] tensor, and empty elements are padding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.protocols import Request, Response
from shared.errors import invalid


def request_rows(request: Request, name: str) -> int:
    """The batch size of a request, read from its required input `name`."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise invalid(f"input '{name}' is required")
    return int(tensor.as_numpy().shape[0])


def has_input(request: Request, name: str) -> bool:
    """Whether the request carries the (optional) input `name`."""
    return pb_utils.get_input_tensor_by_name(request, name) is not None


def _column(request: Request, name: str, rows: int) -> np.ndarray | None:
    """One value per row of input `name` (dims [1]), or None when the client left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.shape[0] != rows or array.size != rows:
        raise invalid(
            f"input '{name}' has shape {list(array.shape)}; expected [{rows}, 1], one value per row"
        )
    return array.reshape(rows)


def bytes_column(request: Request, name: str, rows: int, *, max_bytes: int) -> list[bytes] | None:
    """The raw bytes of a BYTES input per row, each checked against `max_bytes`."""
    column = _column(request, name, rows)
    if column is None:
        return None
    values = [bytes(value) for value in column]
    for value in values:
        if len(value) > max_bytes:
            raise invalid(f"input '{name}' is {len(value)} bytes; the limit is {max_bytes} bytes")
    return values


def text_column(request: Request, name: str, rows: int, *, max_chars: int) -> list[str] | None:
    """A BYTES input decoded as UTF-8 per row, each at most `max_chars` characters."""
    raw = bytes_column(request, name, rows, max_bytes=4 * max_chars)
    if raw is None:
        return None
    texts = []
    for value in raw:
        text = utf8(name, value)
        if len(text) > max_chars:
            raise invalid(f"input '{name}' is {len(text)} characters; the limit is {max_chars}")
        texts.append(text)
    return texts


def number_column(request: Request, name: str, rows: int, cast: type) -> list[Any] | None:
    """A numeric input per row, as Python numbers of type `cast`."""
    column = _column(request, name, rows)
    return None if column is None else [cast(value) for value in column]


def bytes_tensor(name: str, values: Sequence[str | bytes]) -> Any:
    """A BYTES output tensor of shape [rows, 1]."""
    encoded = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    array = np.empty((len(encoded), 1), dtype=np.object_)
    for i, value in enumerate(encoded):
        array[i, 0] = value
    return pb_utils.Tensor(name, array)


def json_tensor(name: str, values: Sequence[Any]) -> Any:
    return bytes_tensor(name, [json.dumps(v, ensure_ascii=False) for v in values])


def utf8(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"input '{name}' is not valid UTF-8 text: {exc}") from exc


def list_column(request: Request, name: str, rows: int, *, max_bytes: int) -> list[list[bytes]]:
    """A BYTES input of dims [-1]: per row, its non-empty elements, each within `max_bytes`."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [[] for _ in range(rows)]
    array = tensor.as_numpy()
    if array.ndim != 2 or array.shape[0] != rows:
        raise invalid(
            f"input '{name}' has shape {list(array.shape)}; expected [{rows}, N], N per row"
        )
    result = []
    for row in array:
        values = [bytes(v) for v in row if len(v) > 0]
        for index, value in enumerate(values):
            if len(value) > max_bytes:
                raise invalid(
                    f"input '{name}' item {index} is {len(value)} bytes; the limit is {max_bytes} "
                    "bytes"
                )
        result.append(values)
    return result


def int_tensor(name: str, values: Sequence[int]) -> Any:
    return pb_utils.Tensor(name, np.asarray(values, dtype=np.int32).reshape(-1, 1))


def response(*output_tensors: Any) -> Response:
    """A successful response carrying `output_tensors` (to return from `execute()`)."""
    return pb_utils.InferenceResponse(output_tensors=list(output_tensors))


def sent_response(request: Request, output_tensors: Sequence[Any]) -> Response:
    """A successful response for `request`'s response sender: the tensors it asked for only.

    Why only those: tritonserver 2.51's Python backend (python_backend r24.10) drops the
    outputs a client did not ask for inside `send()`, with the GIL released; a tensor whose
    last owner was the response is freed there without the GIL, which corrupts the stub's
    Python heap and kills it later with a segfault (in seconds under load, for a client that
    names some outputs: tests/test_stub_races_server.py). python_backend r24.12
    (tritonserver 2.53) takes the GIL there (#390). A returned response is pruned under the
    GIL and needs no filter.
    """
    wanted = request.requested_output_names()
    return response(*(tensor for tensor in output_tensors if tensor.name() in wanted))
