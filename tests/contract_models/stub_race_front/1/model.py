"""The chat fronts' pattern, reduced to what kills 2.51's stub (serving.tensors.sent_response)."""

import collections
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from serving import tensors


class TritonPythonModel:
    def initialize(self, args):
        self.pool = ThreadPoolExecutor(64)

    def execute(self, requests):
        for request in requests:
            prompt = pb_utils.get_input_tensor_by_name(request, "prompt").as_numpy().copy()
            filtered = bool(pb_utils.get_input_tensor_by_name(request, "filtered").as_numpy()[0])
            self.pool.submit(self.serve, request, prompt, filtered)
        return [None] * len(requests)

    def finalize(self):
        self.pool.shutdown(wait=True)

    def serve(self, request, prompt, filtered):
        calls = [
            pb_utils.InferenceRequest(
                model_name="pruning_engine",
                inputs=[pb_utils.Tensor("prompt", prompt)],
                requested_output_names=["text"],
            ).exec(decoupled=True)
            for _ in range(2)
        ]
        pieces = []
        for responses in calls:
            for response in responses:
                text = pb_utils.get_output_tensor_by_name(response, "text")
                pieces.append(bytes(text.as_numpy()[0]).decode())
                request.is_cancelled()
                _churn = [{"i": i, "s": str(i)} for i in range(50)]  # other Python allocations
            collections.deque(responses, 0)
        outputs = [pb_utils.Tensor("text", np.array(["".join(pieces).encode()], np.object_))]
        outputs += [
            pb_utils.Tensor(f"extra{i}", np.array([b"x" * 100] * 3, np.object_)) for i in range(4)
        ]
        if filtered:
            response = tensors.sent_response(request, outputs)
        else:
            response = tensors.response(*outputs)
        del outputs  # the response is the tensors' last owner, as in the chat fronts
        request.get_response_sender().send(
            response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )
