"""Streamed text-to-speech on Triton (decoupled): audio sentence by sentence, then the final flag.

Each sentence's audio goes out as soon as its forward pass is done, so the first sound reaches
the client after one sentence's synthesis instead of the whole text's; the last piece carries
TRITONSERVER_RESPONSE_COMPLETE_FINAL. The first sentences of all requests in a batch share one
forward pass, then the second ones, and so on. A cancelled request gets no more pieces. Inputs,
outputs and settings are those of `tts` (README.md), one text per request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from shared import streaming, triton, tts_requests
from shared.tts_requests import SpeechRow


class TritonPythonModel:
    """Sentence k of every request in the batch is one forward pass; pieces sent as they come."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        self.engine, self.settings = tts_requests.load(args)
        self.errors = triton.ErrorCounter(self.name)
        pb_utils.Logger.log_info(f"{self.name}: loaded {self.engine.describe()}")

    def execute(self, requests: list[Any]) -> None:
        streaming.run_stream_batch(requests, self._parse, self._run, self.name, self.errors)

    def _parse(self, request: Any) -> list[SpeechRow]:
        # One text per request: every response then belongs to that one text.
        return tts_requests.parse(request, self.engine, self.settings, max_rows=1)

    def _run(self, rows: list[SpeechRow], streams: list[streaming.Stream]) -> None:
        def send(index: int, waveform: np.ndarray, last: bool) -> None:
            tensors = tts_requests.output_tensors(self.engine, [rows[index]], [waveform])
            if last:
                streams[index].finish(tensors)
            else:
                streams[index].send(tensors)

        self.engine.stream(
            [row.speech for row in rows], send, lambda index: streams[index].cancelled()
        )
