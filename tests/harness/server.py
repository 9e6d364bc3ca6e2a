"""Several harnessed models served together, addressed by name as a client addresses them.

Each model's BLS requests reach the others (ModelHarness.link), and a request for a model
that is not served gets the server's NOT_FOUND answer instead of a set-up error:

    with ModelHarness(STT) as stt, ModelHarness(VOICE_CHAT) as voice_chat:
        server = HarnessServer(stt, voice_chat)
        results = server.stream("voice_chat", {...})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tests.harness import pb_utils as mock
from tests.harness.errors import UnknownModel
from tests.harness.runner import ModelHarness, Result


class HarnessServer:
    """The models of one tritonserver, each reachable from the others over BLS."""

    def __init__(self, *models: ModelHarness) -> None:
        self.models = {model.name: model for model in models}
        for model in models:
            model.link(*(other for other in models if other is not model))

    def model(self, name: str) -> ModelHarness:
        """The model a request names; UnknownModel (404 / NOT_FOUND) if it is not served."""
        if name not in self.models:
            raise UnknownModel(name)
        return self.models[name]

    def infer(self, name: str, inputs: Mapping[str, np.ndarray], **kwargs: Any) -> Result:
        """A unary infer call (HTTP, or gRPC ModelInfer)."""
        return self.model(name).infer_unary(inputs, **kwargs)

    def stream(self, name: str, inputs: Mapping[str, np.ndarray], **kwargs: Any) -> list[Result]:
        """One request on a gRPC stream: its responses as the client's callback gets them."""
        if name not in self.models:  # on a stream the refusal is an error without a status
            error = mock.TritonError(UnknownModel(name).message, mock.TritonError.NOT_FOUND)
            return [Result(error=error, on_stream=True)]
        model = self.models[name]
        results = model.infer(inputs, **kwargs)
        return results if model.decoupled else [results]
