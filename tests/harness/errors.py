"""What the harness raises when a test drives a model into something the real server handles.

Each class is one outcome a client or an operator would see on tritonserver 2.51, so a test
fails with the reason instead of a result that production would never produce.
"""

from __future__ import annotations


class ServerRejected(Exception):
    """tritonserver refuses the request before the model sees it (HTTP 400, gRPC INVALID_ARGUMENT).

    `message` is the server's own text, so tests can assert what clients will read.
    """

    code = "INVALID_ARG"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DecoupledOverUnary(ServerRejected):
    """A decoupled model called over unary infer: the server refuses it, the model never runs."""

    code = "UNSUPPORTED"
    http_status = 501
    grpc_status = "UNIMPLEMENTED"
    grpc_message = "ModelInfer RPC doesn't support models with decoupled transaction policy"

    def __init__(self) -> None:
        super().__init__("HTTP end point doesn't support models with decoupled transaction policy")


class UnknownModel(ServerRejected):
    """A request for a model the server does not serve (same message over HTTP and gRPC;
    on a gRPC stream it arrives as a stream error without a status code)."""

    code = "NOT_FOUND"
    http_status = 404
    grpc_status = "NOT_FOUND"

    def __init__(self, model: str) -> None:
        super().__init__(f"Request for unknown model: '{model}' is not found")


class UnrealisticBatch(Exception):
    """The requests given to one `execute()` are a batch the server never forms.

    The dynamic batcher caps the rows at max_batch_size, only batches when the config has a
    batcher, and (when an input is optional) only batches requests with the same inputs.
    """


class ClientWouldHang(AssertionError):
    """A request never got its final response: on the real server its client waits forever."""


class ProtocolViolation(AssertionError):
    """The model did something whose outcome on the real server is broken or undefined.

    Example: a non-decoupled request answered through its sender without the final flag and
    then failed by an exception; over HTTP the client reads a corrupt body.
    """


class ServerCrash(BaseException):
    """The call would crash the stub or the whole tritonserver process (2.51).

    A BaseException, so that a model's `except Exception` cannot hide it, as it cannot hide a
    crash of the real server.
    """
