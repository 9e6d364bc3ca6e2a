"""Decoupled contract model: streams `count` responses, or what the optional `mode` selects.

(none)            `count` responses, then an empty COMPLETE_FINAL; count < 0: an error + FINAL
data_final        `count` responses, the last one carrying COMPLETE_FINAL
error_mid         a response, an error response (not final), a response, the final flag
raise_after       one response, then an exception escapes execute()
return_list       one response, then execute() returns a list (decoupled must return None)
send_after_final  the final flag, then a send that must fail (its error is logged)
async             execute() is a coroutine that streams, like the default
until_cancelled   a response, then waits (20 s at most) for the client to cancel, logs whether
                  it did, sends another response (which no client may see) and the final flag
"""

import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _index(i):
    return pb_utils.InferenceResponse([pb_utils.Tensor("index", np.array([i], dtype=np.int32))])


class TritonPythonModel:
    def execute(self, requests):
        modes = [self._mode(r) for r in requests]
        if "async" in modes:
            return self._async(requests)
        returned = None
        for request, mode in zip(requests, modes, strict=True):
            returned = self._stream(request, mode) or returned
        return returned

    async def _async(self, requests):
        for request in requests:
            self._stream(request, "default")

    def _mode(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "mode")
        return tensor.as_numpy()[0].decode() if tensor is not None else "default"

    def _stream(self, request, mode):
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        count = int(pb_utils.get_input_tensor_by_name(request, "count").as_numpy()[0])
        if count < 0:
            error = pb_utils.TritonError(f"count is {count}", pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)
        elif mode == "data_final":
            for i in range(count):
                sender.send(_index(i), flags=final if i == count - 1 else 0)
        elif mode == "error_mid":
            sender.send(_index(0))
            error = pb_utils.TritonError("mid-stream", pb_utils.TritonError.UNAVAILABLE)
            sender.send(pb_utils.InferenceResponse(error=error))
            sender.send(_index(2))
            sender.send(flags=final)
        elif mode == "raise_after":
            sender.send(_index(0))
            raise ValueError("failed after one response")
        elif mode == "return_list":
            sender.send(_index(0))
            return [None]
        elif mode == "send_after_final":
            sender.send(flags=final)
            try:
                sender.send(_index(9))
            except pb_utils.TritonModelException as exc:
                pb_utils.Logger.log_warn(f"contract_decoupled: {exc}")
        elif mode == "until_cancelled":
            sender.send(_index(0))
            for _ in range(400):
                if sender.is_cancelled():
                    break
                time.sleep(0.05)
            pb_utils.Logger.log_info(f"contract_decoupled: cancelled={sender.is_cancelled()}")
            sender.send(_index(1))
            sender.send(flags=final)
        else:
            for i in range(count):
                sender.send(_index(i))
            sender.send(flags=final)
        return None
