"""The harness's fidelity: the same cases through the harness and a real tritonserver agree.

Outputs, datatypes, shapes, error statuses and messages (tracebacks included), the config and
args `initialize()` gets, what pb_utils looks like at import and at execute time, the result
of every API probe (tests/contract_models/contract/1/probes.py), the server's own rejections,
decoupled streams and Logger lines must be the same. Both run the same model files from the
same paths, so even the paths in tracebacks match.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.harness import clients
from tests.harness.runner import ModelHarness, ServerRejected
from tests.harness.server_fixture import RunningServer, server_fixture

CONTRACT = Path(__file__).parent / "contract_models"
MODELS = ["contract", "contract_decoupled"]
contract_server = server_fixture(CONTRACT, MODELS)

pytestmark = pytest.mark.server


def _load_probe_names() -> list[str]:
    path = CONTRACT / "contract" / "1" / "probes.py"
    spec = importlib.util.spec_from_file_location("contract_probes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.PROBES)


PROBES = _load_probe_names()


def text_inputs(
    *texts: str, mode: str | None = None, value: float | None = None
) -> dict[str, np.ndarray]:
    inputs = {"text": np.array([[t.encode()] for t in texts], dtype=np.object_)}
    if value is not None:
        inputs["value"] = np.full((len(texts), 1), value, dtype=np.float32)
    if mode is not None:
        inputs["mode"] = np.array([[mode.encode()]] * len(texts), dtype=np.object_)
    return inputs


CASES: dict[str, dict[str, Any]] = {
    "echo": {"inputs": text_inputs("a", mode="echo", value=1.5)},
    "two rows, optional inputs left out": {"inputs": text_inputs("x", "yz")},
    "unicode": {"inputs": text_inputs("grüße, 東京", value=-2.0)},
    "parameters and id": {
        "inputs": text_inputs("p"),
        "request_id": "req-7",
        "parameters": {"lang": "fr", "n": 3, "flag": True, "é": "ü"},
    },
    "requested subset": {"inputs": text_inputs("s"), "outputs": ["text_out", "info"]},
    **{
        f"error {code}": {"inputs": text_inputs("e", mode=f"error:{code}")}
        for code in [
            "UNKNOWN",
            "INTERNAL",
            "NOT_FOUND",
            "INVALID_ARG",
            "UNAVAILABLE",
            "UNSUPPORTED",
            "ALREADY_EXISTS",
            "CANCELLED",
        ]
    },
    "error without a code": {"inputs": text_inputs("e", mode="noerrorcode")},
    "error with tensors": {"inputs": text_inputs("e", mode="error_and_tensors")},
    "output with another dtype than the config": {"inputs": text_inputs("d", mode="wrong_dtype")},
    "undeclared output": {"inputs": text_inputs("u", mode="undeclared")},
    "bytes kinds and a duplicate name": {"inputs": text_inputs("b", "c", mode="bytes_kinds")},
    "0-d output": {"inputs": text_inputs("z", mode="zero_d")},
    "exception": {"inputs": text_inputs("r", mode="raise")},
    "exception in a nested call": {"inputs": text_inputs("r", mode="raise_key")},
    "exception without a message": {"inputs": text_inputs("r", mode="raise_empty")},
    "custom exception, two lines": {"inputs": text_inputs("r", mode="raise_custom")},
    "TritonModelException raised by the model": {"inputs": text_inputs("r", mode="raise_tme")},
    "execute returns a tuple": {"inputs": text_inputs("t", mode="tuple")},
    "execute returns too few": {"inputs": text_inputs("t", mode="count")},
    "execute returns a non-response": {"inputs": text_inputs("t", mode="nonresp")},
    "answered through the sender": {"inputs": text_inputs("s", mode="sender")},
    "sender: response, then the final flag": {
        "inputs": text_inputs("s", mode="sender_flag0_final")
    },
    "sender: final flag first": {"inputs": text_inputs("s", mode="sender_final_first")},
    "async execute": {"inputs": text_inputs("a", mode="async")},
    "a required input missing, an optional given": {
        "inputs": {"mode": np.array([[b"echo"]], np.object_)}
    },
}

REJECTED: dict[str, dict[str, Any]] = {
    "unknown input among known ones": {
        "inputs": {**text_inputs("a"), "zzz": np.ones((1, 1), np.float32)}
    },
    "too many inputs": {
        "inputs": {**text_inputs("a", mode="echo", value=1.0), "zzz": np.ones((1, 1), np.float32)}
    },
    "no input": {"inputs": {}},
    "wrong dtype": {"inputs": {**text_inputs("a"), "value": np.ones((1, 1), np.float64)}},
    "wrong shape": {"inputs": {"text": np.array([[b"a", b"b"]], np.object_)}},
    "no batch dimension": {"inputs": {"text": np.array([b"a"], np.object_)}},
    "batch over max_batch_size": {"inputs": text_inputs(*"abcde")},
    "inputs with different batch sizes": {
        "inputs": {**text_inputs("a", "b"), "value": np.ones((1, 1), np.float32)}
    },
    "zero rows": {"inputs": {"text": np.zeros((0, 1), np.object_)}},
    "unknown requested output": {"inputs": text_inputs("a"), "outputs": ["nope"]},
    "request id in the message": {
        "inputs": {**text_inputs("a"), "value": np.ones((1, 1), np.int32)},
        "request_id": "id-9",
    },
}


@pytest.fixture(scope="module")
def harness() -> Iterator[ModelHarness]:
    with ModelHarness(CONTRACT / "contract") as h:
        yield h


@pytest.fixture(scope="module")
def decoupled() -> Iterator[ModelHarness]:
    with ModelHarness(CONTRACT / "contract_decoupled") as h:
        yield h


def harness_view(harness: ModelHarness, case: dict[str, Any]) -> clients.View:
    try:
        result = harness.infer(
            case["inputs"],
            request_id=case.get("request_id", ""),
            parameters=case.get("parameters"),
            requested_outputs=case.get("outputs"),
        )
    except ServerRejected as exc:
        return clients.rejected_view(exc)
    return clients.harness_view(result)


def server_view(server: RunningServer, case: dict[str, Any]) -> clients.View:
    return clients.http_view(
        server.http_url,
        "contract",
        case["inputs"],
        outputs=case.get("outputs"),
        request_id=case.get("request_id", ""),
        parameters=case.get("parameters"),
    )


def same_config_text(mine: str, theirs: str) -> None:
    """Equal JSON with the same key order, but for map entries: the server's order of
    `parameters` changes from one start to the next."""
    assert json.loads(mine) == json.loads(theirs)
    assert mine == theirs or len(json.loads(mine)["parameters"]) > 1
    assert list(json.loads(mine)) == list(json.loads(theirs))


def test_initialize_gets_the_servers_config_and_args(
    harness: ModelHarness, decoupled: ModelHarness, contract_server: RunningServer
) -> None:
    for h in (harness, decoupled):
        same_config_text(h.args()["model_config"], contract_server.model_config_text(h.name))
    # The model reports args, module name and path, get_model_dir(), sys.path, and the names
    # pb_utils has at import time and at execute time: all must be identical.
    case = {"inputs": text_inputs("i", mode="info")}
    mine, theirs = harness_view(harness, case), server_view(contract_server, case)
    assert mine[0] == theirs[0] == "ok", (mine, theirs)
    info, real = (json.loads(view[1]["info"][2][0][0]) for view in (mine, theirs))
    same_config_text(info["args"].pop("model_config"), real["args"].pop("model_config"))
    assert "Tensor" not in info["import_time_names"] and "Tensor" in info["names"]
    assert info == real


@pytest.mark.parametrize("name", list(CASES))
def test_a_request_gets_the_same_answer(
    harness: ModelHarness, contract_server: RunningServer, name: str
) -> None:
    mine, theirs = harness_view(harness, CASES[name]), server_view(contract_server, CASES[name])
    assert mine == theirs


@pytest.mark.parametrize("name", list(REJECTED))
def test_the_server_rejects_the_same_requests_with_its_message(
    harness: ModelHarness, contract_server: RunningServer, name: str
) -> None:
    with pytest.raises(ServerRejected):
        harness_view_or_raise(harness, REJECTED[name])
    assert harness_view(harness, REJECTED[name]) == server_view(contract_server, REJECTED[name])


def harness_view_or_raise(harness: ModelHarness, case: dict[str, Any]) -> None:
    harness.request(
        case["inputs"], request_id=case.get("request_id", ""), requested_outputs=case.get("outputs")
    )


def test_every_api_probe_behaves_the_same(
    harness: ModelHarness, contract_server: RunningServer
) -> None:
    """Probes run four at a time (one server batch each); reports must match."""

    def server_report(name: str) -> dict[str, Any]:
        view = server_view(contract_server, {"inputs": text_inputs("p", mode=f"probe:{name}")})
        assert view[0] == "ok", (name, view)
        return json.loads(view[1]["info"][2][0][0])

    with ThreadPoolExecutor(4) as pool:
        theirs = dict(zip(PROBES, pool.map(server_report, PROBES), strict=True))
    mismatches = {}
    for name in PROBES:
        view = harness_view(harness, {"inputs": text_inputs("p", mode=f"probe:{name}")})
        mine = json.loads(view[1]["info"][2][0][0])
        if mine.get("raised") in ("TypeError", "AttributeError") and mine.get("raised") == theirs[
            name
        ].get("raised"):
            continue  # pybind11's text for these lists C++ signatures; the type must agree
        if mine != theirs[name]:
            mismatches[name] = {"harness": mine, "server": theirs[name]}
    assert not mismatches, json.dumps(mismatches, indent=1, ensure_ascii=False)


def test_an_exception_fails_the_whole_batch_with_the_same_message(
    harness: ModelHarness, contract_server: RunningServer
) -> None:
    batch = [
        text_inputs("ok-1", mode="echo"),
        text_inputs("bad", mode="raise_custom"),
        text_inputs("ok-2", mode="echo"),
    ]
    mine = [clients.harness_view(r) for r in harness.execute([harness.request(i) for i in batch])]
    with ThreadPoolExecutor(len(batch)) as pool:
        theirs = list(pool.map(lambda i: server_view(contract_server, {"inputs": i}), batch))
    assert mine == theirs
    assert mine[0][0] == "error" and "CustomError: line one\nline two\n\nAt:\n" in mine[0][2]


def test_error_codes_reach_grpc_clients_as_the_harness_says(
    harness: ModelHarness, contract_server: RunningServer
) -> None:
    for code in [
        "UNKNOWN",
        "INTERNAL",
        "NOT_FOUND",
        "INVALID_ARG",
        "UNAVAILABLE",
        "UNSUPPORTED",
        "ALREADY_EXISTS",
        "CANCELLED",
    ]:
        inputs = text_inputs("g", mode=f"error:{code}")
        result = harness.infer(inputs)
        status = clients.grpc_status(contract_server.grpc_url, "contract", inputs)
        assert status == (result.grpc_status, result.message), code


def test_logger_lines_reach_the_server_log_as_recorded(
    harness: ModelHarness, contract_server: RunningServer
) -> None:
    def contract_lines(text: str) -> list[tuple[str, str]]:
        return [r for r in clients.log_records(text) if "contract log" in r[1]]

    before = len(harness.logs)
    harness.infer(text_inputs("l", mode="log"))
    mine = [tuple(r) for r in harness.logs[before:]]
    logged_before = len(contract_lines(contract_server.log_text()))
    assert server_view(contract_server, {"inputs": text_inputs("l", mode="log")})[0] == "ok"
    # The lines may reach the file after the response (see wait_for_log).
    text = contract_server.wait_for_log(
        lambda text: len(contract_lines(text)) >= logged_before + len(mine)
    )
    assert len(mine) == 4 and contract_lines(text)[logged_before:] == mine


STREAMS = {
    "three, then the final flag": (3, None),
    "none, then the final flag": (0, None),
    "error with the final flag": (-1, None),
    "last response carries the final flag": (2, "data_final"),
    "error in the middle": (1, "error_mid"),
    "exception after one response": (1, "raise_after"),
    "returns a list": (1, "return_list"),
    "send after the final flag": (0, "send_after_final"),
    "async execute": (2, "async"),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_decoupled_streams_agree(
    decoupled: ModelHarness, contract_server: RunningServer, name: str
) -> None:
    count, mode = STREAMS[name]
    inputs = {"count": np.array([count], dtype=np.int32)}
    if mode is not None:
        inputs["mode"] = np.array([mode.encode()], dtype=np.object_)
    mine = clients.harness_stream_view(decoupled.infer(inputs))
    theirs = clients.stream_view(contract_server.grpc_url, "contract_decoupled", inputs)
    assert mine == theirs
