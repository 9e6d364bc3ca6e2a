"""The chat fronts' pattern, reduced to what kills 2.51's stub (serving.bls,
serving.tensors.sent_response): see config.pbtxt for the modes."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from serving import tensors
from serving.bls import FinishedStreams

PIECES = 12  # what stub_race_engine streams per call


class TritonPythonModel:
    def initialize(self, args):
        self.pool = ThreadPoolExecutor(64)
        self.streams = FinishedStreams()

    def execute(self, requests):
        for request in requests:
            prompt = pb_utils.get_input_tensor_by_name(request, "prompt").as_numpy().copy()
            mode = pb_utils.get_input_tensor_by_name(request, "mode").as_numpy()[0].decode()
            self.pool.submit(self.serve, request, prompt, mode)
        return [None] * len(requests)

    def finalize(self):
        self.pool.shutdown(wait=True)

    def serve(self, request, prompt, mode):
        pieces = []
        for _ in range(2):
            stream = pb_utils.InferenceRequest(
                model_name="stub_race_engine",
                inputs=[pb_utils.Tensor("prompt", prompt)],
                requested_output_names=["text"],
            ).exec(decoupled=True)
            for response in stream:
                text = pb_utils.get_output_tensor_by_name(response, "text")
                pieces.append(bytes(text.as_numpy()[0]).decode())
                _churn = [{"i": i, "s": str(i)} for i in range(50)]  # other Python allocations
                if len(pieces) % PIECES:  # between pieces, not after the last (as the fronts)
                    request.is_cancelled()
            del response
            if mode != "let_go":
                self.streams.release([stream], request)
            del stream  # "let_go": maybe before the stub has sent the stream's cleanup
        outputs = [pb_utils.Tensor("text", np.array(["".join(pieces).encode()], np.object_))]
        outputs += [
            pb_utils.Tensor(f"extra{i}", np.array([b"x" * 100] * 3, np.object_)) for i in range(4)
        ]
        if mode == "unfiltered":
            response = tensors.response(*outputs)
        else:
            response = tensors.sent_response(request, outputs)
        del outputs  # the response is the tensors' last owner, as in the chat fronts
        request.get_response_sender().send(
            response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )
