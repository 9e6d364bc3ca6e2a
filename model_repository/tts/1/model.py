"""Text-to-speech on Triton: parse requests, synthesise them as one batch, respond per request.

The work is in `backends.tts` (the engines) and `shared.tts_requests` (inputs, settings, output
encoding); this file is only the execution pattern. Inputs, outputs and settings: README.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from shared import triton, tts_requests
from shared.tts_requests import SpeechRow


class TritonPythonModel:
    """All sentences of all requests of a batch go through shared forward passes."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        self.engine, self.settings = tts_requests.load(args)
        self.errors = triton.ErrorCounter(self.name)
        pb_utils.Logger.log_info(f"{self.name}: loaded {self.engine.describe()}")

    def execute(self, requests: list[Any]) -> list[Any]:
        return triton.run_batch(
            requests, self._parse, self._run, self._respond, self.name, self.errors
        )

    def _parse(self, request: Any) -> list[SpeechRow]:
        return tts_requests.parse(request, self.engine, self.settings)

    def _run(self, rows: list[SpeechRow]) -> list[tuple[SpeechRow, np.ndarray]]:
        return list(zip(rows, self.engine.speak([row.speech for row in rows]), strict=True))

    def _respond(self, request: Any, results: list[tuple[SpeechRow, np.ndarray]]) -> Any:
        rows, waveforms = zip(*results, strict=True)
        return pb_utils.InferenceResponse(
            output_tensors=tts_requests.output_tensors(self.engine, rows, waveforms)
        )
