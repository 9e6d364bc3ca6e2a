"""The mock pb_utils is as strict as tritonserver 2.51's: misuse fails here as it fails there.

Each test pins one behaviour a model author relies on, checked on the real server by
tests/test_harness_contract.py (probes) or in tests/harness/*.py docstrings where the real
behaviour is a crash that a contract test cannot run.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.bls import FinishedStreams
from tests.harness import pb_utils as mock
from tests.harness.errors import ServerCrash
from tests.harness.runner import ModelHarness

CONTRACT = Path(__file__).parent / "contract_models" / "contract"


@pytest.fixture(scope="module")
def harness() -> Iterator[ModelHarness]:
    with ModelHarness(CONTRACT) as h:
        yield h


@pytest.fixture
def pb(harness: ModelHarness) -> Iterator[Any]:
    """The mock module, used as from inside the contract model's execute()."""
    with harness.activated() as module:
        yield module


def test_what_the_real_module_lacks_is_missing(pb: Any) -> None:
    with pytest.raises(AttributeError):
        pb.Logger.log_warning("no such method in Triton")
    with pytest.raises(AttributeError):
        pb.InferenceResponseSender  # noqa: B018 - the class exists, the module does not export it
    with pytest.raises(TypeError):
        pb.InferenceResponse(parameters={"a": 1})  # added after 2.51
    with pytest.raises(AttributeError):
        pb.InferenceResponse().parameters()
    with pytest.raises(TypeError, match="Unable to convert function return value"):
        pb.Tensor("t", np.zeros(1, np.float32)).triton_dtype()  # broken in 2.51


def test_the_shipped_pure_python_half_is_used_unchanged(pb: Any) -> None:
    assert pb.__file__ == str(mock.shipped_module_path())
    encoded = pb.serialize_byte_tensor(np.array([b"ab", b"\x00c", "é"], dtype=np.object_))
    assert pb.deserialize_bytes_tensor(encoded).tolist() == [b"ab", b"\x00c", "é".encode()]
    assert pb.triton_string_to_numpy("TYPE_FP32") == np.float32
    assert pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END == 2


def test_error_codes_are_enum_values_not_ints(pb: Any) -> None:
    code = pb.TritonError.INVALID_ARG
    assert code == 3 and int(code) == 3 and {3: "x"}[code] == "x"
    assert (repr(code), str(code), code.name) == (
        "<__ErrorCode.INVALID_ARG: 3>",
        "__ErrorCode.INVALID_ARG",
        "INVALID_ARG",
    )
    with pytest.raises(TypeError):
        pb.TritonError("x", 3)
    with pytest.raises(TypeError):
        code + 1
    error = pb.TritonError("message")
    assert (error.message(), error.code()) == ("message", pb.TritonError.INTERNAL)
    with pytest.raises(TypeError, match="BaseException"):
        raise error  # a TritonError is returned in a response, never raised


@pytest.mark.parametrize(
    "dtype", [bool, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32,
              np.int64, np.float16, np.float32, np.float64, object, "S3"],
)  # fmt: skip
def test_tensor_accepts_the_types_triton_has(pb: Any, dtype: Any) -> None:
    array = np.zeros(2, dtype=dtype)
    assert pb.Tensor("t", array).as_numpy() is array


@pytest.mark.parametrize("dtype", ["<U3", ">f4", np.complex64, np.longdouble, "datetime64[s]"])
def test_tensor_refuses_other_numpy_types(pb: Any, dtype: Any) -> None:
    with pytest.raises(pb.TritonModelException, match=r"^NumPy dtype is not supported\.$"):
        pb.Tensor("t", np.zeros(2, dtype=dtype))


def test_tensor_construction_rules(pb: Any) -> None:
    with pytest.raises(pb.TritonModelException, match="Tensor name cannot be an empty string"):
        pb.Tensor("", np.zeros(1))
    with pytest.raises(TypeError):
        pb.Tensor("t", [1.0, 2.0])  # a list is not an ndarray
    with pytest.raises(TypeError):
        pb.Tensor(name="t", numpy_array=np.zeros(1))  # positional only
    tensor = pb.Tensor("t", np.arange(10, dtype=np.float32)[::2])
    assert tensor.as_numpy().flags["C_CONTIGUOUS"] and tensor.shape() == [5]
    assert pb.Tensor("t", np.array(1.5, np.float32)).shape() == []  # 0-d stays 0-d
    with pytest.raises(AttributeError):
        tensor.anything = 1  # pybind objects take no new attributes


def test_dlpack(pb: Any) -> None:
    tensor = pb.Tensor("t", np.arange(3, dtype=np.int32))
    assert pb.Tensor.from_dlpack("u", tensor.to_dlpack()).as_numpy().tolist() == [0, 1, 2]
    assert np.from_dlpack(tensor).tolist() == [0, 1, 2]
    with pytest.raises(pb.TritonModelException, match="string tensors"):
        pb.Tensor("t", np.array([b"a"], dtype=object)).to_dlpack()
    with pytest.raises(ServerCrash, match="kills the 2.51 stub"):
        pb.Tensor.from_dlpack("u", np.arange(3))
    torch = pytest.importorskip("torch")
    bf16 = pb.Tensor.from_dlpack("b", torch.ones(2, dtype=torch.bfloat16))
    assert bf16.shape() == [2]
    with pytest.raises(pb.TritonModelException, match="BF16"):
        bf16.as_numpy()


def test_response_rules(pb: Any) -> None:
    tensor = pb.Tensor("a", np.zeros(1))
    response = pb.InferenceResponse((tensor,))
    response.output_tensors().clear()  # a copy: the response keeps its tensors
    assert [t.name() for t in response.output_tensors()] == ["a"]
    with pytest.raises(TypeError):
        pb.InferenceResponse(output_tensors=None)
    with pytest.raises(TypeError):
        pb.InferenceResponse(error="not a TritonError")
    with pytest.raises(pb.TritonModelException, match="should not be empty"):
        pb.InferenceResponse([None])


def test_a_bls_request_needs_a_model_name_and_simple_parameters(pb: Any) -> None:
    with pytest.raises(TypeError):
        pb.InferenceRequest(requested_output_names=["a"], inputs=[])
    with pytest.raises(pb.TritonModelException, match="bool/int/str, found type <class 'float'>"):
        pb.InferenceRequest(
            model_name="m", requested_output_names=[], inputs=[], parameters={"a": 1.5}
        )
    request = pb.InferenceRequest(
        model_name="m", requested_output_names=[], inputs=[], parameters={"b": "é"}
    )
    assert request.parameters() == '{"b": "\\u00e9"}'  # json.dumps, unlike a server request
    with pytest.raises(pb.TritonModelException, match="no reference to the decoupled state"):
        request.get_response_sender().send(pb.InferenceResponse(), flags=1)


def test_bls_exec_reaches_registered_models_once_initialized_and_until_finalize(
    harness: ModelHarness,
) -> None:
    """InferRequest::Exec refuses only a stub that is not initialized or is finalizing: a
    thread the model started may call between two execute()s (voice_chat withdraws a chat
    call so)."""
    harness.instance.serving = False  # as inside initialize() or finalize()
    try:
        with harness.activated(executing=False) as pb:
            request = pb.InferenceRequest(model_name="other", requested_output_names=[], inputs=[])
            with pytest.raises(pb.TritonModelException, match="only supported during the 'exec"):
                request.exec()
    finally:
        harness.instance.serving = True
    with harness.activated(executing=False) as pb:
        outside = request.exec()
        assert outside.has_error() and "Model 'other' is not ready" in outside.error().message()
    with harness.activated() as pb:
        missing = request.exec()
        assert missing.has_error() and "Model 'other' is not ready" in missing.error().message()
        harness.bls_models["other"] = lambda r: [pb.InferenceResponse(), pb.InferenceResponse()]
        try:
            stream = request.exec(decoupled=True)
            assert len(list(stream)) == 2
            FinishedStreams().release(
                [stream],
                mock.server_request(
                    [],
                    request_id="",
                    requested=set(),
                    parameters="{}",
                    decoupled=False,
                    model_name="m",
                ),
            )
            assert pb.is_model_ready("other") and not pb.is_model_ready("third")
        finally:
            del harness.bls_models["other"]


def sender(decoupled: bool) -> Any:
    return mock.server_request(
        [], request_id="", requested=set(), parameters="{}", decoupled=decoupled, model_name="m"
    ).get_response_sender()


def test_non_decoupled_sender_rules(pb: Any) -> None:
    final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    with pytest.raises(pb.TritonModelException, match="cannot send complete final before"):
        sender(False).send(flags=final)
    plain = sender(False)
    plain.send(pb.InferenceResponse())  # a response first, the final flag after: allowed
    with pytest.raises(pb.TritonModelException, match="cannot send more than one response"):
        plain.send(pb.InferenceResponse(), flags=final)
    plain.send(flags=final)
    with pytest.raises(pb.TritonModelException, match="Response sender has been closed"):
        plain.send(flags=final)


def test_sender_argument_rules(pb: Any) -> None:
    stream = sender(True)
    with pytest.raises(pb.TritonModelException, match="must be provided when the response flags"):
        stream.send(None, flags=0)
    with pytest.raises(pb.TritonModelException, match=r"Unsupported flag provided\.$"):
        stream.send(pb.InferenceResponse(), flags=2)
    with pytest.raises(TypeError):
        stream.send("not a response")
    stream.send(pb.InferenceResponse())
    stream.send(pb.InferenceResponse(), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb.TritonModelException, match="has been closed"):
        stream.send(pb.InferenceResponse())


def test_logger_is_static_typed_and_recorded(harness: ModelHarness, pb: Any) -> None:
    before = len(harness.logs)
    pb.Logger.log_warn("w")
    pb.Logger.log("v", pb.Logger.VERBOSE)
    pb.Logger.log_error(b"bytes are accepted")
    assert harness.logs[before:] == [
        ("WARNING", "w"), ("VERBOSE", "v"), ("ERROR", "bytes are accepted")
    ]  # fmt: skip
    with pytest.raises(TypeError):
        pb.Logger.log_info(42)
    with pytest.raises(TypeError):
        pb.Logger.log("x", 1)  # a level is a LogLevel value
    with pytest.raises(TypeError, match="No constructor defined"):
        pb.Logger()


def test_counters_gauges_and_histograms(harness: ModelHarness, pb: Any) -> None:
    family = pb.MetricFamily(
        name="unit_requests_total", description="d", kind=pb.MetricFamily.COUNTER
    )
    counter = family.Metric(labels={"code": "x"})
    counter.increment(2)
    family.Metric(labels={"code": "x"}).increment(1)  # the same labels: the same series
    assert counter.value() == 3.0 == harness.metric("unit_requests_total", {"code": "x"}).value
    with pytest.raises(TypeError):
        counter.increment("1")
    with pytest.raises(pb.TritonModelException, match="Unexpected buckets"):
        family.Metric(buckets=[1.0])
    histogram = pb.MetricFamily("unit_seconds", "d", pb.MetricFamily.HISTOGRAM)
    with pytest.raises(pb.TritonModelException, match="Missing required buckets"):
        histogram.Metric(labels={})
    with pytest.raises(pb.TritonModelException, match="Buckets must be a list"):
        histogram.Metric(buckets=(1.0, 2.0))
    histogram.Metric(buckets=[0.1, 1.0]).observe(0.5)
    assert harness.metric("unit_seconds").observations == [0.5]
    with pytest.raises(TypeError):
        pb.MetricFamily("unit_int_kind", "d", 0)  # a kind is a MetricKind value


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.increment(-1), "can only be incremented monotonically"),
        (lambda m: m.set(1), "COUNTER does not support Set"),
        (lambda m: m.observe(1), "COUNTER does not support Observe"),
    ],
)
def test_what_the_server_refuses_is_a_crash_not_an_exception(
    pb: Any, call: Any, message: str
) -> None:
    family = pb.MetricFamily("unit_refused_total", "d", pb.MetricFamily.COUNTER)
    with pytest.raises(ServerCrash, match=message):
        try:
            call(family.Metric(labels={}))
        except Exception:  # a model's catch-all cannot hide it, as it cannot hide a crash
            pytest.fail("ServerCrash must not be an Exception")


def test_metric_family_rules_the_server_crashes_on(pb: Any) -> None:
    with pytest.raises(ServerCrash, match="not a valid Prometheus metric name"):
        pb.MetricFamily("bad name!", "d", pb.MetricFamily.COUNTER)
    keep = pb.MetricFamily("unit_kind_clash", "d", pb.MetricFamily.COUNTER)
    with pytest.raises(ServerCrash, match="Family name already exists with different type"):
        pb.MetricFamily("unit_kind_clash", "d", pb.MetricFamily.GAUGE)
    with pytest.raises(ServerCrash, match="Invalid label name"):
        keep.Metric(labels={"bad name": "v"})
    with pytest.raises(ServerCrash, match="non-string"):
        keep.Metric(labels={"n": 1})


def test_a_metric_dies_with_its_family_object(pb: Any) -> None:
    family = pb.MetricFamily("unit_dropped", "d", pb.MetricFamily.GAUGE)
    gauge = family.Metric(labels={})
    gauge.set(1)
    del family
    gc.collect()
    with pytest.raises(pb.TritonModelException, match="'MetricFamily' has been deleted"):
        gauge.set(2)
