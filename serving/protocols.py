"""The pb_utils objects the glue passes around, as the small interfaces it relies on.

`triton_python_backend_utils` ships no type information, and its classes exist only inside the
Python backend stub (or the test harness that mimics it). These Protocols name the methods this
package calls, so the type checker holds the glue to them instead of to `Any`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class InputTensor(Protocol):
    def name(self) -> str: ...

    def as_numpy(self) -> np.ndarray: ...


class Response(Protocol):
    """A `pb_utils.InferenceResponse`."""

    def has_error(self) -> bool: ...

    def error(self) -> Any: ...


class ResponseSender(Protocol):
    """A decoupled request's `pb_utils.InferenceResponseSender`."""

    def send(self, response: Any = None, flags: int = 0) -> None: ...

    def is_cancelled(self) -> bool: ...


class Request(Protocol):
    """A `pb_utils.InferenceRequest` (inputs are read with `pb_utils.get_input_tensor_by_name`)."""

    def is_cancelled(self) -> bool: ...

    def request_id(self) -> str: ...

    def inputs(self) -> list[InputTensor]: ...

    def requested_output_names(self) -> set[str]: ...

    def get_response_sender(self) -> ResponseSender: ...
