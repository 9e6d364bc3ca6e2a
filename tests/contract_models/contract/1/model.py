"""Contract model: echoes, fails, raises or reports what it was given, by the `mode` input."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        config = json.loads(args["model_config"])
        self.greeting = config["parameters"]["greeting"]["string_value"]
        self.config = config
        pb_utils.Logger.log_info(f"contract: initialized as {args['model_instance_name']}")

    def execute(self, requests):
        responses = []
        for request in requests:
            mode_tensor = pb_utils.get_input_tensor_by_name(request, "mode")
            mode = mode_tensor.as_numpy()[0, 0].decode() if mode_tensor is not None else "echo"
            if mode == "raise":
                raise ValueError("boom from the contract model")
            if mode.startswith("error:"):
                code = mode.split(":", 1)[1]
                error = pb_utils.TritonError(
                    f"chosen error {code}", getattr(pb_utils.TritonError, code)
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            if mode == "noerrorcode":
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError("no code given"))
                )
                continue
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()
            value = pb_utils.get_input_tensor_by_name(request, "value")
            values = value.as_numpy() if value is not None else np.zeros(text.shape, np.float32)
            out = np.array(
                [[self.greeting.encode() + b":" + row[0]] for row in text], dtype=np.object_
            )
            if mode == "config":
                info = {
                    "max_batch_size": self.config["max_batch_size"],
                    "inputs": [
                        (i["name"], i["data_type"], i["dims"]) for i in self.config["input"]
                    ],
                    "kind": self.args["model_instance_kind"],
                    "name": self.args["model_name"],
                    "version": self.args["model_version"],
                }
            else:
                info = {
                    "parameters": json.loads(request.parameters()),
                    "request_id": request.request_id(),
                    "requested": sorted(request.requested_output_names()),
                    "input_dtypes": {t.name(): str(t.as_numpy().dtype) for t in request.inputs()},
                }
            infos = np.array(
                [[json.dumps(info, sort_keys=True).encode()]] * text.shape[0], dtype=np.object_
            )
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("text_out", out),
                        pb_utils.Tensor("value_out", (values * 2).astype(np.float32)),
                        pb_utils.Tensor("info", infos),
                    ]
                )
            )
        return responses
