"""Answers each request with PIECES streamed responses, the last one final."""

import numpy as np
import triton_python_backend_utils as pb_utils

PIECES = 12


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for i in range(PIECES):
                text = pb_utils.Tensor("text", np.array([b"piece %d " % i], np.object_))
                final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if i == PIECES - 1 else 0
                sender.send(pb_utils.InferenceResponse([text]), flags=final)
        return None
