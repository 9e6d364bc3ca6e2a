"""Contract model: what it does for a request is chosen by the request's `mode` input.

  echo (default)       text_out = "<greeting>:<text>", value_out = 2 * value, info = request facts
  info                 info = args, config, request facts and what pb_utils looked like
  log                  logs one line at each level, then echoes
  error:<CODE>         a TritonError response with that code; noerrorcode: without a code
  raise, raise_key, raise_empty, raise_custom, raise_tme   an exception escapes execute()
  tuple, count, nonresp                                    execute() returns what it must not
  sender, sender_flag0_final, sender_final_first           answers through the response sender
  wrong_dtype, undeclared, bytes_kinds, zero_d, error_and_tensors   odd responses
  probe:<name>         info = the report of one API probe (probes.py)
  async                execute() is a coroutine (when any request of the batch asks for it)

Modes that change execute()'s return act on the whole batch, as they would in any model.
"""

import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

from . import probes

# What the module looks like while model.py is imported (the stub attaches its C++ half later).
IMPORT_TIME_NAMES = sorted(n for n in dir(pb_utils) if not n.startswith("__"))


class CustomError(Exception):
    pass


def _nested_failure():
    return {}["missing key"]


class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        self.config = json.loads(args["model_config"])
        self.greeting = self.config["parameters"]["greeting"]["string_value"]
        pb_utils.Logger.log_info(f"contract: initialized as {args['model_instance_name']}")

    def execute(self, requests):
        modes = [self._mode(r) for r in requests]
        if "async" in modes:
            return self._async(requests)
        whole_batch = {
            "tuple": lambda: tuple(self._respond(r, "echo") for r in requests),
            "count": lambda: [],
            "nonresp": lambda: ["not a response" for _ in requests],
        }
        for mode in modes:
            if mode in whole_batch:
                return whole_batch[mode]()
        return [self._respond(r, m) for r, m in zip(requests, modes, strict=True)]

    async def _async(self, requests):
        return [self._respond(r, "echo") for r in requests]

    def _mode(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "mode")
        return tensor.as_numpy()[0, 0].decode() if tensor is not None else "echo"

    def _respond(self, request, mode):
        if mode == "raise":
            raise ValueError("boom from the contract model")
        if mode == "raise_key":
            _nested_failure()
        if mode == "raise_empty":
            raise RuntimeError()
        if mode == "raise_custom":
            raise CustomError("line one\nline two")
        if mode == "raise_tme":
            raise pb_utils.TritonModelException("raised by the model")
        if mode.startswith("error:"):
            code = mode.split(":", 1)[1]
            error = pb_utils.TritonError(
                f"chosen error {code}", getattr(pb_utils.TritonError, code)
            )
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        if mode == "noerrorcode":
            return pb_utils.InferenceResponse(error=pb_utils.TritonError("no code given"))
        if mode == "log":
            pb_utils.Logger.log_info("contract log: info")
            pb_utils.Logger.log_warn("contract log: warn")
            pb_utils.Logger.log_error("contract log: error")
            pb_utils.Logger.log("contract log: explicit warning", pb_utils.Logger.WARNING)
        response = pb_utils.InferenceResponse(output_tensors=self._outputs(request, mode))
        if mode == "error_and_tensors":
            error = pb_utils.TritonError("tensors and an error", pb_utils.TritonError.NOT_FOUND)
            response = pb_utils.InferenceResponse(response.output_tensors(), error)
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if mode == "sender":
            sender.send(response, flags=final)
            return None
        if mode == "sender_flag0_final":
            sender.send(response)
            sender.send(flags=final)
            return None
        if mode == "sender_final_first":
            sender.send(flags=final)
        return response

    def _outputs(self, request, mode):
        text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()
        rows = text.shape[0]
        value = pb_utils.get_input_tensor_by_name(request, "value")
        values = value.as_numpy() if value is not None else np.zeros((rows, 1), np.float32)
        out = np.array([[self.greeting.encode() + b":" + t[0]] for t in text], dtype=np.object_)
        value_out = (values * 2).astype(np.int32 if mode == "wrong_dtype" else np.float32)
        info = self._info(request, mode)
        tensors = [
            pb_utils.Tensor("text_out", out),
            pb_utils.Tensor("value_out", value_out),
            pb_utils.Tensor("info", np.array([[json.dumps(info).encode()]] * rows, np.object_)),
        ]
        if mode == "undeclared":
            tensors.append(pb_utils.Tensor("extra", np.ones(1, np.float32)))
        if mode == "bytes_kinds":
            kinds = [np.array([[b"ab\x00"]] * rows), np.array([["str-é"]] * rows, dtype=object)]
            tensors[0] = pb_utils.Tensor("text_out", kinds[0])
            tensors.append(pb_utils.Tensor("info", kinds[1]))  # the last of a name wins
        if mode == "zero_d":
            tensors[1] = pb_utils.Tensor("value_out", np.array(1.5, np.float32))
        return tensors

    def _info(self, request, mode):
        if mode.startswith("probe:"):
            return probes.run(pb_utils, mode.split(":", 1)[1], request)
        facts = {
            "parameters": request.parameters(),
            "request_id": request.request_id(),
            "requested": sorted(request.requested_output_names()),
            "inputs": [[t.name(), str(t.as_numpy().dtype), t.shape()] for t in request.inputs()],
        }
        if mode == "info":
            facts.update(
                args=self.args,
                module=[__name__, __package__, __file__],
                model_dir=pb_utils.get_model_dir(),
                import_time_names=IMPORT_TIME_NAMES,
                names=sorted(n for n in dir(pb_utils) if not n.startswith("__")),
                class_names={
                    name: sorted(n for n in dir(getattr(pb_utils, name)) if not n.startswith("_"))
                    for name in (
                        "Tensor",
                        "InferenceRequest",
                        "InferenceResponse",
                        "TritonError",
                        "Logger",
                        "MetricFamily",
                    )
                },
                sender_names=sorted(
                    n for n in dir(request.get_response_sender()) if not n.startswith("_")
                ),
                sys_path_tail=sys.path[-3:-1],
            )
        return facts
