"""Text-to-speech on Triton: text in, encoded speech out, every sentence of a batch together.

The work is in `backends.tts` (the engines) and `serving.tts` (inputs and output encoding);
this file is only the execution pattern. Contract and settings: docs/models/tts.md.
"""

from __future__ import annotations

import numpy as np

from backends.tts.engine import TtsEngine, load_engine
from backends.tts.settings import tts_params
from serving import tensors, tts
from serving.adapters import UnaryModel
from serving.protocols import Request, Response
from serving.tts import SpeechRow

Spoken = tuple[SpeechRow, np.ndarray]


class TritonPythonModel(UnaryModel[TtsEngine, SpeechRow, Spoken]):
    """All sentences of all requests of a batch go through shared forward passes."""

    params = tts_params("piper-en_US-joe-medium")
    load_engine = staticmethod(load_engine)

    def start_metrics(self) -> None:
        super().start_metrics()
        self.speech = tts.SpeechMetrics(self.name)

    def parse(self, request: Request) -> list[SpeechRow]:
        return tts.parse(request, self.engine, self.settings)

    def run(self, rows: list[SpeechRow]) -> list[Spoken]:
        return list(zip(rows, self.engine.speak([row.speech for row in rows]), strict=True))

    def respond(self, request: Request, results: list[Spoken]) -> Response:
        rows, waveforms = zip(*results, strict=True)
        self.speech.spoken(self.engine, waveforms, self.elapsed())
        return tensors.response(*tts.output_tensors(self.engine, rows, waveforms))
