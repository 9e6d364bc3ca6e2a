"""The harness's BLS, client refusals and cancellation agree with a real tritonserver 2.51.

`bls_caller` (tests/contract_models/bls_caller) calls `contract` and `contract_decoupled`
over BLS in each scenario and reports every response it got; the harness (the three models
in one HarnessServer) must report the same. Then what a client sees: a decoupled model over
unary infer, a model error on a gRPC stream, an unknown model, and a client that cancels.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.harness import clients
from tests.harness.errors import DecoupledOverUnary, UnknownModel
from tests.harness.runner import ModelHarness
from tests.harness.server import HarnessServer
from tests.harness.server_fixture import RunningServer, server_fixture

CONTRACT = Path(__file__).parent / "contract_models"
bls_server = server_fixture(CONTRACT, ["contract", "contract_decoupled", "bls_caller"])

pytestmark = pytest.mark.server

SCENARIOS = [
    "unary",
    "unary_error",
    "unary_raise",
    "unary_bad_dtype",
    "stream",
    "stream_error",
    "stream_error_mid",
    "stream_data_final",
    "stream_of_unary",
    "decoupled_over_unary",
    "missing",
    "async",
]


@pytest.fixture(scope="module")
def harnesses() -> Iterator[HarnessServer]:
    with (
        ModelHarness(CONTRACT / "contract") as contract,
        ModelHarness(CONTRACT / "contract_decoupled") as decoupled,
        ModelHarness(CONTRACT / "bls_caller") as caller,
    ):
        yield HarnessServer(contract, decoupled, caller)


def mode(name: str) -> dict[str, np.ndarray]:
    return {"mode": np.array([name.encode()], dtype=np.object_)}


def count(n: int, how: str | None = None) -> dict[str, np.ndarray]:
    inputs = {"count": np.array([n], dtype=np.int32)}
    return {**inputs, **mode(how)} if how else inputs


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_bls_responses_agree(
    harnesses: HarnessServer, bls_server: RunningServer, scenario: str
) -> None:
    mine = harnesses.infer("bls_caller", mode(scenario))
    assert mine.error is None, mine.message
    theirs = clients.http_view(bls_server.http_url, "bls_caller", mode(scenario))
    assert theirs[0] == "ok", theirs
    assert json.loads(mine.text("report")) == json.loads(theirs[1]["report"][2][0])


def test_a_decoupled_model_over_unary_infer_is_refused(
    harnesses: HarnessServer, bls_server: RunningServer
) -> None:
    with pytest.raises(DecoupledOverUnary) as refused:
        harnesses.infer("contract_decoupled", count(1))
    inputs = count(1)
    assert clients.http_view(bls_server.http_url, "contract_decoupled", inputs) == (
        clients.rejected_view(refused.value)
    )
    assert clients.grpc_status(bls_server.grpc_url, "contract_decoupled", inputs) == (
        refused.value.grpc_status,
        refused.value.grpc_message,
    )


def test_an_unknown_model_is_not_found(harnesses: HarnessServer, bls_server: RunningServer) -> None:
    with pytest.raises(UnknownModel) as unknown:
        harnesses.infer("no_such_model", count(1))
    assert clients.http_view(bls_server.http_url, "no_such_model", count(1)) == (
        clients.rejected_view(unknown.value)
    )
    assert clients.grpc_status(bls_server.grpc_url, "no_such_model", count(1)) == (
        unknown.value.grpc_status,
        unknown.value.message,
    )
    (mine,) = harnesses.stream("no_such_model", count(1))
    assert stream_errors(bls_server, "no_such_model", count(1)) == [
        (mine.grpc_status, mine.message)
    ]


def stream_errors(
    server: RunningServer, model: str, inputs: dict[str, np.ndarray]
) -> list[tuple[str | None, str]]:
    """The (status, message) of each error a gRPC stream's callback gets for one request."""
    errors: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: errors.put(error))
    try:
        client.async_stream_infer(model, clients._inputs(grpcclient, inputs))
        error = errors.get(timeout=30)
    finally:
        client.stop_stream()
        client.close()
    assert error is not None
    return [(error.status(), error.message())]


def test_a_model_error_on_a_stream_has_no_status(
    harnesses: HarnessServer, bls_server: RunningServer
) -> None:
    (mine,) = harnesses.stream("contract_decoupled", count(-1))
    assert (mine.grpc_status, mine.message) == (None, "count is -1")
    assert stream_errors(bls_server, "contract_decoupled", count(-1)) == [
        (mine.grpc_status, mine.message)
    ]


def test_responses_after_the_client_cancelled_never_reach_it(
    harnesses: HarnessServer, bls_server: RunningServer
) -> None:
    model = harnesses.model("contract_decoupled")
    request = model.request(count(0, "until_cancelled"))

    def client() -> None:  # cancels once the first response has arrived
        while not request._sender._deliveries:
            time.sleep(0.01)
        model.cancel(request)

    watcher = threading.Thread(target=client)
    watcher.start()
    (mine,) = model.execute([request])
    watcher.join()
    assert model.logs[-1].message == "contract_decoupled: cancelled=True"

    got: queue.Queue[Any] = queue.Queue()
    real = grpcclient.InferenceServerClient(bls_server.grpc_url)
    real.start_stream(callback=lambda result, error: got.put((result, error)))
    inputs = count(0, "until_cancelled")
    real.async_stream_infer("contract_decoupled", clients._inputs(grpcclient, inputs))
    first, _ = got.get(timeout=30)
    real.stop_stream(cancel_requests=True)
    _, cancelled = got.get(timeout=30)
    bls_server.wait_for_log(lambda text: "contract_decoupled: cancelled=True" in text)
    time.sleep(1.0)  # what the model sent after the cancel would have arrived by now
    assert got.empty()
    real.close()
    theirs = [
        ("data", {"index": first.as_numpy("index").tolist()}),
        ("error", str(cancelled.status()).removeprefix("StatusCode."), cancelled.message()),
    ]
    assert [
        ("data", {n: a.tolist() for n, a in r.outputs.items()})
        if r.error is None
        else ("error", r.grpc_status, r.message)
        for r in mine
    ] == theirs
