"""ModelHarness loads and drives a model as tritonserver 2.51 does (checked in
tests/test_harness_contract.py): how model.py is imported and isolated, what initialize() and
execute() receive, how returns, exceptions, senders and streams turn into client results."""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.harness.errors import ServerCrash
from tests.harness.runner import (
    ClientWouldHang,
    ModelHarness,
    ProtocolViolation,
    ServerRejected,
    UnrealisticBatch,
)

CONTRACT = Path(__file__).parent / "contract_models"

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 4
dynamic_batching {{ }}
input [ {{ name: "x", data_type: TYPE_FP32, dims: [ -1 ] }} ]
output [
  {{ name: "y", data_type: TYPE_FP32, dims: [ -1 ] }},
  {{ name: "s", data_type: TYPE_STRING, dims: [ 1 ] }}
]
"""


def write_model(root: Path, name: str, code: str, config: str = CONFIG, **files: str) -> Path:
    """A model directory: config.pbtxt, 1/model.py and any other files of 1/."""
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config.format(name=name), encoding="utf-8")
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(code), encoding="utf-8")
    for file_name, text in files.items():
        (model_dir / "1" / f"{file_name}.py").write_text(textwrap.dedent(text), encoding="utf-8")
    return model_dir


ECHO = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("y", x * 2),
                pb_utils.Tensor("s", np.array([["é"], [7]][: x.shape[0]], dtype=object)),
            ]))
        return out
"""


def x(*rows: list[float]) -> dict[str, np.ndarray]:
    return {"x": np.array(rows, dtype=np.float32)}


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[ModelHarness]:
    with ModelHarness(write_model(tmp_path, "echo", ECHO)) as harness:
        yield harness


def test_args_are_strings_and_the_config_is_the_completed_one(tmp_path: Path) -> None:
    harness = ModelHarness(
        write_model(tmp_path, "m", ECHO), parameters={"size": "7"}, instance_kind="GPU"
    )
    args = harness.args()
    assert all(isinstance(v, str) for v in args.values())
    assert {k: v for k, v in args.items() if k != "model_config"} == {
        "model_instance_kind": "GPU",
        "model_instance_name": "m_0",  # no instance_group: named after the model
        "model_instance_device_id": "0",
        "model_repository": str(tmp_path / "m"),
        "model_version": "1",
        "model_name": "m",
    }
    config = json.loads(args["model_config"])
    assert config["parameters"] == {"size": {"string_value": "7"}}
    assert config["instance_group"][0]["kind"] == "KIND_GPU" and config["input"][0]["dims"] == [-1]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]  # filled in by the server
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


def test_import_is_isolated_and_undone(tmp_path: Path) -> None:
    helper = "WHO = '{}'\n"
    code = """
        from . import helper  # relative imports work: the module is "1.model"
        import sibling        # so do imports from the version directory
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                self.who = (__name__, helper.WHO, sibling.WHO, pb_utils.get_model_dir())
    """
    one = write_model(tmp_path, "one", code, helper=helper.format(1), sibling=helper.format("a"))
    two = write_model(tmp_path, "two", code, helper=helper.format(2), sibling=helper.format("b"))
    path_before = list(sys.path)
    with ModelHarness(one) as first, ModelHarness(two) as second:
        assert first.model.who == ("1.model", "1", "a", str(one / "1"))
        assert second.model.who == ("1.model", "2", "b", str(two / "1"))
    assert sys.path == path_before
    assert not {"triton_python_backend_utils", "1", "1.model", "sibling"} & set(sys.modules)


def test_the_cpp_half_of_pb_utils_is_missing_while_model_py_is_imported(tmp_path: Path) -> None:
    code = """
        import triton_python_backend_utils as pb_utils
        INVALID = pb_utils.TritonError.INVALID_ARG  # fails in tritonserver too
        class TritonPythonModel:
            pass
    """
    with pytest.raises(AttributeError, match="TritonError"):
        ModelHarness(write_model(tmp_path, "early", code)).load()


def test_inputs_arrive_as_the_server_delivers_them(tmp_path: Path) -> None:
    config = CONFIG.replace("TYPE_FP32, dims: [ -1 ] }} ]", "TYPE_STRING, dims: [ 1 ] }} ]", 1)
    code = """
        import json, numpy as np
        import triton_python_backend_utils as pb_utils
        class TritonPythonModel:
            def execute(self, requests):
                r = requests[0]
                x = r.inputs()[0].as_numpy()
                facts = [repr(x.tolist()), str(x.dtype), r.parameters(), r.request_id(),
                         type(r.requested_output_names()).__name__,
                         sorted(r.requested_output_names())]
                x[0, 0] = b"changed"  # the model's copy, not the test's array
                s = np.array([[json.dumps(facts).encode()]], dtype=object)
                return [pb_utils.InferenceResponse([pb_utils.Tensor("s", s)])]
    """
    with ModelHarness(write_model(tmp_path, "inputs", code, config)) as harness:
        sent = np.array([["grüße"]], dtype=object)  # str: clients send it as UTF-8 bytes
        result = harness.infer(
            {"x": sent}, request_id="r-1", parameters={"n": 3, "é": True}, requested_outputs=["s"]
        )
        assert json.loads(result.outputs["s"][0, 0]) == [
            repr([["grüße".encode()]]), "object", '{"n":3,"é":true}', "r-1", "set", ["s"]
        ]  # fmt: skip
        assert sent[0, 0] == "grüße" and list(result.outputs) == ["s"]
        assert json.loads(harness.infer({"x": sent}).outputs["s"][0, 0])[2:] == [
            "{}", "", "set", ["s", "y"]
        ]  # fmt: skip


def test_outputs_reach_the_client_as_the_wire_carries_them(echo: ModelHarness) -> None:
    result = echo.infer(x([1.0, 2.0], [3.0, 4.0]), requested_outputs=["y", "s"])
    assert result.outputs["y"].tolist() == [[2.0, 4.0], [6.0, 8.0]]
    assert result.outputs["s"].tolist() == [["é".encode()], [b"7"]]  # str and int as bytes
    only_y = echo.infer(x([1.0]), requested_outputs=["y"])
    assert list(only_y.outputs) == ["y"]  # unrequested outputs are pruned


def test_the_server_rejects_before_the_model(echo: ModelHarness) -> None:
    with pytest.raises(ServerRejected) as rejected:
        echo.request({"x": np.ones((1, 2), np.float64)})
    assert rejected.value.message == (
        "[request id: <id_unknown>] inference input 'x' data-type is 'FP64', but model 'echo' "
        "expects 'FP32'"
    )
    assert rejected.value.http_status == 400
    with pytest.raises(ServerRejected, match=r"batch-size must be <= 4 for 'echo'"):
        echo.request(x(*[[1.0]] * 5))
    with pytest.raises(ServerRejected, match=r"^unexpected inference input 'z' for model 'echo'$"):
        echo.request({"z": np.ones((1, 1), np.float32)})


def test_a_request_missing_a_required_input_reaches_execute_if_another_is_optional() -> None:
    with ModelHarness(CONTRACT / "contract") as harness:
        request = harness.request({"mode": np.array([[b"echo"]], dtype=object)})
        (result,) = harness.execute([request])
        assert result.code == "INTERNAL" and "AttributeError" in result.message


def test_only_batches_the_dynamic_batcher_forms(echo: ModelHarness) -> None:
    with pytest.raises(UnrealisticBatch, match="never exceeds max_batch_size 4"):
        echo.execute([echo.request(x([1.0], [2.0], [3.0])), echo.request(x([1.0], [2.0]))])
    with ModelHarness(CONTRACT / "contract") as contract:
        mixed = [
            contract.request({"text": np.array([[b"a"]], dtype=object)}),
            contract.request(
                {"text": np.array([[b"b"]], dtype=object), "value": np.ones((1, 1), np.float32)}
            ),
        ]
        with pytest.raises(UnrealisticBatch, match="same inputs"):
            contract.execute(mixed)
        assert [r.error for r in contract.execute(mixed, enforce_batcher=False)] == [None, None]


def test_what_execute_returns_is_checked_with_the_stubs_messages(tmp_path: Path) -> None:
    code = """
        import triton_python_backend_utils as pb_utils
        class TritonPythonModel:
            def execute(self, requests):
                return self.answer(requests)
    """
    with ModelHarness(write_model(tmp_path, "ret", code)) as harness:
        cases = {
            lambda rs: tuple(pb_utils_response(harness) for _ in rs):
                "Expected a list in the execute return, found type '<class 'tuple'>'.",
            lambda rs: []:
                "Number of InferenceResponse objects do not match the number of InferenceRequest "
                "objects. InferenceRequest(s) size is:2, and InferenceResponse(s) size is:0\n",
            lambda rs: ["x", "y"]:
                "Expected an 'InferenceResponse' object in the execute function return list, "
                "found type '<class 'str'>'.",
        }  # fmt: skip
        for answer, message in cases.items():
            harness.model.answer = answer
            results = harness.execute([harness.request(x([1.0])) for _ in range(2)])
            expected = f"Failed to process the request(s) for model 'ret_0', message: {message}"
            assert [(r.code, r.message) for r in results] == [("INTERNAL", expected)] * 2


def pb_utils_response(harness: ModelHarness) -> object:
    return harness.pb_utils.InferenceResponse()


def test_an_exception_fails_the_batch_with_the_servers_text(tmp_path: Path) -> None:
    code = """
        def fail():
            raise RuntimeError()

        class TritonPythonModel:
            def execute(self, requests):
                fail()
    """
    model_dir = write_model(tmp_path, "boom", code)
    with ModelHarness(model_dir) as harness:
        results = harness.execute([harness.request(x([1.0])) for _ in range(3)])
    path = model_dir / "1" / "model.py"
    assert [r.message for r in results] == [
        "Failed to process the request(s) for model 'boom_0', message: RuntimeError: "
        f"<EMPTY MESSAGE>\n\nAt:\n  {path}(3): fail\n  {path}(7): execute\n"
    ] * 3
    assert harness.server_log == [results[0].message]


SENDER = """
import numpy as np
import triton_python_backend_utils as pb_utils
F = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

def response():
    return pb_utils.InferenceResponse([pb_utils.Tensor("y", np.ones((1, 1), np.float32))])

class TritonPythonModel:
    def execute(self, requests):
        return self.plan(requests)
"""


@pytest.fixture
def sender_model(tmp_path: Path) -> Iterator[ModelHarness]:
    with ModelHarness(write_model(tmp_path, "sender", SENDER), response_timeout=0.2) as harness:
        yield harness


def test_answered_requests_keep_their_response_when_the_batch_fails_later(
    sender_model: ModelHarness,
) -> None:
    module = sender_model.module

    def plan(requests):
        requests[0].get_response_sender().send(module.response(), flags=module.F)
        raise ValueError("after the first answer")

    sender_model.model.plan = plan
    first, second = sender_model.execute([sender_model.request(x([1.0])) for _ in range(2)])
    assert first.error is None and first.outputs["y"].tolist() == [[1.0]]
    assert second.code == "INTERNAL" and "ValueError: after the first answer" in second.message


def test_a_request_never_answered_would_hang_its_client(sender_model: ModelHarness) -> None:
    sender_model.model.plan = lambda requests: [None for _ in requests]
    with pytest.raises(ClientWouldHang):
        sender_model.execute([sender_model.request(x([1.0]))])


def test_an_unrequested_output_sent_from_a_worker_thread_is_a_server_crash(
    sender_model: ModelHarness,
) -> None:
    """2.51's send() frees it without the GIL; the crash reaches the test even when the
    worker swallows every exception (as a ThreadPoolExecutor future does)."""
    module = sender_model.module

    def plan(requests):
        def answer() -> None:
            with contextlib.suppress(BaseException):
                requests[0].get_response_sender().send(module.response(), flags=module.F)

        threading.Thread(target=answer).start()
        return [None]

    sender_model.model.plan = plan
    with pytest.raises(ServerCrash, match=r"did not ask for \(y\)"):
        sender_model.execute([sender_model.request(x([1.0]), requested_outputs=["s"])])


def test_a_partial_answer_then_a_failure_is_a_protocol_violation(
    sender_model: ModelHarness,
) -> None:
    module = sender_model.module

    def plan(requests):
        requests[0].get_response_sender().send(module.response())  # no final flag
        return [module.response()]  # a second response: the stub refuses, the batch fails

    sender_model.model.plan = plan
    with pytest.raises(ProtocolViolation, match="corrupt"):
        sender_model.execute([sender_model.request(x([1.0]))])


def test_async_execute_runs_on_the_stubs_event_loop(tmp_path: Path) -> None:
    code = """
        import asyncio, threading
        import numpy as np
        import triton_python_backend_utils as pb_utils
        class TritonPythonModel:
            async def execute(self, requests):
                await asyncio.sleep(0)
                name = threading.current_thread().name
                return [pb_utils.InferenceResponse([pb_utils.Tensor("s", np.array([[name]], dtype=object))])
                        for _ in requests]
    """
    with ModelHarness(write_model(tmp_path, "aio", code)) as harness:
        result = harness.infer(x([1.0]))
        assert result.error is None and result.text("s") != "MainThread"


def test_decoupled_streams_and_cancellation() -> None:
    with ModelHarness(CONTRACT / "contract_decoupled") as harness:
        (stream,) = harness.execute([harness.request({"count": np.array([2], np.int32)})])
        assert [(r.outputs.get("index", np.array([])).tolist(), r.final) for r in stream] == [
            ([0], False), ([1], False), ([], True)
        ]  # fmt: skip
        assert stream[-1].null_response
        request = harness.request({"count": np.array([1], np.int32)})
        harness.cancel(request)
        assert request.is_cancelled() and request.get_response_sender().is_cancelled()
        (stream,) = harness.execute([request])
        assert all(r.cancelled for r in stream)
        late = harness.request(
            {"count": np.array([0], np.int32), "mode": np.array([b"send_after_final"], np.object_)}
        )
        assert [r.final for r in harness.execute([late])[0]] == [True]
        assert harness.logs[-1].message.endswith("Response sender has been closed.")


def test_finalize_errors_are_only_logged(tmp_path: Path) -> None:
    code = """
        class TritonPythonModel:
            def execute(self, requests):
                return []
            def finalize(self):
                raise OSError("cleanup failed")
    """
    harness = ModelHarness(write_model(tmp_path, "fin", code)).load()
    harness.finalize()
    assert "OSError: cleanup failed" in harness.server_log[-1]


def test_auto_complete_config_shapes_the_config(tmp_path: Path) -> None:
    code = """
        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(config):
                config.set_max_batch_size(2)
                return config
            def initialize(self, args):
                import json
                self.max_batch_size = json.loads(args["model_config"])["max_batch_size"]
    """
    config = CONFIG.replace("max_batch_size: 4\ndynamic_batching {{ }}\n", "")
    with ModelHarness(write_model(tmp_path, "auto", code, config)) as harness:
        assert harness.model.max_batch_size == 2 == harness.config.max_batch_size
