"""Probes of the pb_utils API, run inside execute() by the harness and by a real server.

Each probe returns something JSON-able or raises; `run()` reports which. The contract tests
require the same report from both (for a TypeError only the type: pybind11's text lists C++
signatures). Probes that would crash the real server are not here (see tests/harness
pb_metrics.py and pb_utils.py: ServerCrash).
"""

import numpy as np

# No probe makes the server refuse a metric request: on 2.51 that aborts the whole server in
# some runs (tests/harness/pb_metrics.py). Families stay alive for the same reason.
_FAMILIES = []


def _error(pb):
    return pb.TritonError


def _tensor(pb, *args, **kwargs):
    return pb.Tensor(*args, **kwargs)


def _family(pb, name, kind="COUNTER"):
    family = pb.MetricFamily(name, "contract probe", getattr(pb.MetricFamily, kind))
    _FAMILIES.append(family)
    return family


def _counter_ops(pb):
    family = _family(pb, "contract_probe_ops_total")
    metric = family.Metric(labels={"k": "v"})
    metric.increment(2)
    metric.increment(1)
    same = family.Metric(labels={"k": "v"}).value()  # the same labels share one series
    return [metric.value(), same, family.Metric().value()]


def _gauge_ops(pb):
    family = _family(pb, "contract_probe_gauge", "GAUGE")
    metric = family.Metric(labels={})
    metric.set(5)
    metric.increment(-2)
    return metric.value()


def _metric_call(pb, kind, labels, buckets, call, *args, **kwargs):
    family = _family(pb, f"contract_probe_{kind.lower()}_{call}", kind)
    metric = family.Metric(labels=labels, buckets=buckets)
    return getattr(metric, call)(*args, **kwargs)


def _orphan_metric(pb):
    # The family object is dropped at once: the server deletes it, and the metric with it.
    family = pb.MetricFamily("contract_probe_orphan", "contract probe", pb.MetricFamily.GAUGE)
    metric = family.Metric(labels={})
    del family
    metric.set(1)


def _sender_of_bls_request(pb):
    request = pb.InferenceRequest(model_name="m", requested_output_names=["a"], inputs=[])
    request.get_response_sender().send(pb.InferenceResponse(), flags=1)


def _bls_missing(pb):
    request = pb.InferenceRequest(
        model_name="no_such_model", requested_output_names=["a"], inputs=[]
    )
    response = request.exec()
    return [response.has_error(), response.error().message(), response.error().code().name]


def _output_list_is_a_copy(pb):
    response = pb.InferenceResponse()
    response.output_tensors().append(pb.Tensor("a", np.zeros(1)))
    return len(response.output_tensors())


PROBES = {
    # TritonError: codes are enum values (an int is refused), equal to their int.
    "error_int_code": lambda pb, r: _error(pb)("x", 3),
    "error_none_code": lambda pb, r: _error(pb)("x", None),
    "error_int_message": lambda pb, r: _error(pb)(5),
    "error_bytes_message": lambda pb, r: _error(pb)(b"x").message(),
    "error_keywords": lambda pb, r: _error(pb)(message="m", code=_error(pb).NOT_FOUND).message(),
    "error_default_code": lambda pb, r: str(_error(pb)("x").code()),
    "error_code_values": lambda pb, r: [
        [repr(c), str(c), c.name, c.value, int(c), c == c.value, {c: 1}.get(c.value)]
        for c in (_error(pb).INVALID_ARG, _error(pb).CANCELLED)
    ],
    "error_code_type": lambda pb, r: type(_error(pb).INTERNAL).__name__,
    "error_is_not_an_exception": lambda pb, r: issubclass(_error(pb), BaseException),
    "error_raise": lambda pb, r: (_ for _ in ()).throw(_error(pb)("x")),
    "error_equality": lambda pb, r: _error(pb)("x") == _error(pb)("x"),
    "exception_bases": lambda pb, r: [c.__name__ for c in pb.TritonModelException.__mro__],
    # Tensor construction.
    "tensor_empty_name": lambda pb, r: _tensor(pb, "", np.zeros(1)),
    "tensor_from_list": lambda pb, r: _tensor(pb, "t", [1, 2]),
    "tensor_int_name": lambda pb, r: _tensor(pb, 5, np.zeros(1)),
    "tensor_keywords": lambda pb, r: _tensor(pb, name="t", numpy_array=np.zeros(1)),
    "tensor_unicode": lambda pb, r: _tensor(pb, "t", np.array(["u"])),
    "tensor_big_endian": lambda pb, r: _tensor(pb, "t", np.zeros(2, ">f4")),
    "tensor_complex": lambda pb, r: _tensor(pb, "t", np.zeros(2, np.complex64)),
    "tensor_longdouble": lambda pb, r: _tensor(pb, "t", np.zeros(2, np.longdouble)),
    "tensor_datetime": lambda pb, r: _tensor(pb, "t", np.zeros(2, "datetime64[s]")),
    "tensor_dtypes": lambda pb, r: [
        str(_tensor(pb, "t", np.zeros(1, d)).as_numpy().dtype)
        for d in (
            bool,
            np.uint8,
            np.uint16,
            np.uint32,
            np.uint64,
            np.int8,
            np.int16,
            np.int32,
            np.int64,
            np.float16,
            np.float32,
            np.float64,
            object,
        )
    ],
    "tensor_zero_d": lambda pb, r: _tensor(pb, "t", np.array(1.5, np.float32)).shape(),
    "tensor_bytes_s": lambda pb, r: [
        str(_tensor(pb, "t", np.array([b"ab\x00", b"c"])).as_numpy().dtype),
        repr(_tensor(pb, "t", np.array([b"ab\x00", b"c"])).as_numpy().tolist()),
    ],
    "tensor_object_mixed": lambda pb, r: repr(
        _tensor(pb, "t", np.array(["s", 1, None], dtype=object)).as_numpy().tolist()
    ),
    "tensor_same_array": lambda pb, r: (lambda a: _tensor(pb, "t", a).as_numpy() is a)(
        np.arange(3.0)
    ),
    "tensor_strided_copied": lambda pb, r: (
        _tensor(pb, "t", np.arange(6.0)[::2]).as_numpy().flags["C_CONTIGUOUS"]
    ),
    "tensor_shape_type": lambda pb, r: type(_tensor(pb, "t", np.zeros((2, 3))).shape()).__name__,
    "tensor_triton_dtype": lambda pb, r: _tensor(pb, "t", np.zeros(1, np.float32)).triton_dtype(),
    "tensor_is_cpu": lambda pb, r: _tensor(pb, "t", np.zeros(1)).is_cpu(),
    "tensor_set_attribute": lambda pb, r: setattr(_tensor(pb, "t", np.zeros(1)), "foo", 1),
    "tensor_dlpack_bytes": lambda pb, r: _tensor(
        pb, "t", np.array([b"a"], dtype=object)
    ).to_dlpack(),
    "tensor_dlpack_capsule": lambda pb, r: (
        pb.Tensor.from_dlpack("u", _tensor(pb, "t", np.arange(3, dtype=np.int32)).to_dlpack())
        .as_numpy()
        .tolist()
    ),
    "tensor_dlpack_numpy_out": lambda pb, r: np.from_dlpack(
        _tensor(pb, "t", np.arange(3, dtype=np.int16))
    ).tolist(),
    "tensor_dlpack_device": lambda pb, r: list(_tensor(pb, "t", np.arange(3)).__dlpack_device__()),
    "tensor_from_dlpack_list": lambda pb, r: pb.Tensor.from_dlpack("u", [1]),
    "tensor_from_dlpack_empty_name": lambda pb, r: pb.Tensor.from_dlpack(
        "", _tensor(pb, "t", np.arange(3)).to_dlpack()
    ),
    "tensor_empty_bytes": lambda pb, r: _tensor(pb, "t", np.zeros((0, 1), dtype=object)).shape(),
    # InferenceResponse: 2.51 has no parameters.
    "response_parameters_argument": lambda pb, r: pb.InferenceResponse(parameters={"a": 1}),
    "response_parameters_method": lambda pb, r: pb.InferenceResponse().parameters(),
    "response_error_string": lambda pb, r: pb.InferenceResponse(error="bad"),
    "response_tensors_none": lambda pb, r: pb.InferenceResponse(output_tensors=None),
    "response_tensors_tuple": lambda pb, r: len(
        pb.InferenceResponse(output_tensors=(pb.Tensor("a", np.zeros(1)),)).output_tensors()
    ),
    "response_tensors_arrays": lambda pb, r: pb.InferenceResponse(output_tensors=[np.zeros(1)]),
    "response_tensors_none_element": lambda pb, r: pb.InferenceResponse(output_tensors=[None]),
    "response_positional": lambda pb, r: (
        pb.InferenceResponse([], _error(pb)("x")).error().message()
    ),
    "response_defaults": lambda pb, r: [
        repr(pb.InferenceResponse().error()),
        pb.InferenceResponse().has_error(),
        type(pb.InferenceResponse().output_tensors()).__name__,
    ],
    "response_output_list_copy": lambda pb, r: _output_list_is_a_copy(pb),
    # The request execute() receives.
    "request_accessors": lambda pb, r: [
        type(r.requested_output_names()).__name__,
        type(r.inputs()).__name__,
        repr(r.correlation_id()),
        repr(r.flags()),
        repr(r.timeout()),
        r.is_cancelled(),
        r.get_response_sender() is r.get_response_sender(),
        type(r.get_response_sender()).__name__,
        repr(r.trace().get_context()),
        r.inputs()[0].as_numpy().flags["WRITEABLE"],
    ],
    "request_release_flags_none": lambda pb, r: r.set_release_flags(None),
    # BLS requests built by the model.
    "bls_request": lambda pb, r: pb.InferenceRequest(
        model_name="m", requested_output_names=["a"], inputs=[]
    ).request_id(),
    "bls_request_without_model": lambda pb, r: pb.InferenceRequest(
        requested_output_names=["a"], inputs=[]
    ),
    "bls_float_parameter": lambda pb, r: pb.InferenceRequest(
        model_name="m", requested_output_names=["a"], inputs=[], parameters={"a": 1.5}
    ),
    "bls_parameters_text": lambda pb, r: pb.InferenceRequest(
        model_name="m", requested_output_names=["a"], inputs=[], parameters={"a": 1, "b": "é"}
    ).parameters(),
    "bls_float_correlation_id": lambda pb, r: pb.InferenceRequest(
        model_name="m", requested_output_names=["a"], inputs=[], correlation_id=1.5
    ),
    "bls_sender": lambda pb, r: _sender_of_bls_request(pb),
    "bls_missing_model": lambda pb, r: _bls_missing(pb),
    # Logger.
    "logger_log_warning": lambda pb, r: pb.Logger.log_warning("x"),
    "logger_int_message": lambda pb, r: pb.Logger.log_info(123),
    "logger_bytes_message": lambda pb, r: pb.Logger.log_info(b"probe bytes"),
    "logger_int_level": lambda pb, r: pb.Logger.log("x", 1),
    "logger_levels": lambda pb, r: [
        repr(pb.Logger.LogLevel.INFO),
        str(pb.Logger.VERBOSE),
        int(pb.Logger.ERROR),
    ],
    "logger_constructor": lambda pb, r: pb.Logger(),
    # Metrics.
    "metric_kinds": lambda pb, r: [
        repr(pb.MetricFamily.COUNTER),
        type(pb.MetricFamily.GAUGE).__name__,
        int(pb.MetricFamily.HISTOGRAM),
    ],
    "metric_int_kind": lambda pb, r: pb.MetricFamily("contract_probe_int_kind", "d", 0),
    "metric_same_name_same_kind": lambda pb, r: len(
        [_family(pb, "contract_probe_twice"), _family(pb, "contract_probe_twice")]
    ),
    "metric_labels_not_dict": lambda pb, r: _family(pb, "contract_probe_l1").Metric(
        labels=[("a", "b")]
    ),
    "metric_buckets_on_counter": lambda pb, r: _family(pb, "contract_probe_b1").Metric(
        buckets=[1.0]
    ),
    "metric_histogram_without_buckets": lambda pb, r: _family(
        pb, "contract_probe_h1", "HISTOGRAM"
    ).Metric(labels={}),
    "metric_histogram_tuple_buckets": lambda pb, r: _family(
        pb, "contract_probe_h2", "HISTOGRAM"
    ).Metric(buckets=(1.0,)),
    "metric_counter_ops": lambda pb, r: _counter_ops(pb),
    "metric_gauge_ops": lambda pb, r: _gauge_ops(pb),
    "metric_counter_string": lambda pb, r: _metric_call(pb, "COUNTER", {}, None, "increment", "1"),
    "metric_counter_keyword": lambda pb, r: _metric_call(
        pb, "COUNTER", {}, None, "increment", value=1
    ),
    "metric_histogram_observe": lambda pb, r: _metric_call(
        pb, "HISTOGRAM", {}, [1.0, 2.0], "observe", 1.5
    ),
    "metric_family_dropped": lambda pb, r: _orphan_metric(pb),
    # Module-level functions.
    "model_ready": lambda pb, r: [
        pb.is_model_ready("contract"),
        pb.is_model_ready("no_such_model"),
    ],
    "model_config_class": lambda pb, r: pb.ModelConfig('{"max_batch_size": 2}').as_dict(),
    "serialize_edge_cases": lambda pb, r: [
        repr(pb.serialize_byte_tensor(np.array([], dtype=object))),
        repr(pb.serialize_byte_tensor(np.zeros(1))),
    ],
}


def run(pb, name, request):
    """The probe's report: {"ok": value} or {"raised": type name, "message": text}."""
    try:
        value = PROBES[name](pb, request)
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}
    return {"ok": value if _jsonable(value) else repr(type(value).__name__)}


def _jsonable(value):
    return value is None or isinstance(value, bool | int | float | str | list | dict)
