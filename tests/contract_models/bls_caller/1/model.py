"""BLS contract model: the request's `mode` names a BLS scenario, `report` is what came back.

Each response is reported as {"error": [message, code] | null, "outputs": {name: values}};
a scenario's report is the list of its responses (a stream: every response the iterator
gave, the empty final one included).

  unary, unary_error, unary_raise, unary_bad_dtype   exec() of `contract`
  stream, stream_error, stream_error_mid, stream_data_final   exec(decoupled=True) of
                       `contract_decoupled`
  stream_of_unary      exec(decoupled=True) of the non-decoupled `contract`
  decoupled_over_unary exec() of `contract_decoupled`
  missing              exec() of a model the server does not have
  async                async_exec() of a unary call and a stream, awaited together

Streams are let go through serving.bls.FinishedStreams, as every model must on 2.51.
"""

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.bls import FinishedStreams


def _strings(*values):
    return np.array([[v.encode()] for v in values], dtype=np.object_)


def _contract(mode, value=None):
    inputs = [pb_utils.Tensor("text", _strings("b")), pb_utils.Tensor("mode", _strings(mode))]
    if value is not None:
        inputs.append(pb_utils.Tensor("value", value))
    return pb_utils.InferenceRequest(
        model_name="contract", requested_output_names=["text_out", "value_out"], inputs=inputs
    )


def _decoupled(count, mode=None, model="contract_decoupled"):
    inputs = [pb_utils.Tensor("count", np.array([count], dtype=np.int32))]
    if mode is not None:
        inputs.append(pb_utils.Tensor("mode", np.array([mode.encode()], dtype=np.object_)))
    return pb_utils.InferenceRequest(
        model_name=model, requested_output_names=["index"], inputs=inputs
    )


def _report(response):
    error = response.error()
    outputs = {}
    for tensor in response.output_tensors():
        array = tensor.as_numpy()
        outputs[tensor.name()] = [
            v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()
        ]
    return {
        "error": None if error is None else [error.message(), error.code().name],
        "outputs": outputs,
    }


SCENARIOS = {
    "unary": lambda: [_contract("echo").exec()],
    "unary_error": lambda: [_contract("error:INVALID_ARG").exec()],
    "unary_raise": lambda: [_contract("raise").exec()],
    "unary_bad_dtype": lambda: [_contract("echo", np.ones((1, 1), np.float64)).exec()],
    "stream": lambda: _decoupled(3).exec(decoupled=True),
    "stream_error": lambda: _decoupled(-1).exec(decoupled=True),
    "stream_error_mid": lambda: _decoupled(1, "error_mid").exec(decoupled=True),
    "stream_data_final": lambda: _decoupled(2, "data_final").exec(decoupled=True),
    "stream_of_unary": lambda: _contract("echo").exec(decoupled=True),
    "decoupled_over_unary": lambda: [_decoupled(2).exec()],
    "missing": lambda: [_decoupled(1, model="no_such_model").exec()],
}


class TritonPythonModel:
    def initialize(self, args):
        self.streams = FinishedStreams()

    async def execute(self, requests):
        responses = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "mode").as_numpy()[0].decode()
            if mode == "async":
                unary, stream = await asyncio.gather(
                    _contract("echo").async_exec(), _decoupled(2).async_exec(decoupled=True)
                )
                got = [unary, *stream]
                self.streams.release([stream], request)
            else:
                called = SCENARIOS[mode]()
                got = list(called)
                if mode.startswith("stream"):
                    self.streams.release([called], request)
            report = json.dumps([_report(r) for r in got])
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("report", _strings(report)[0])])
            )
        return responses
