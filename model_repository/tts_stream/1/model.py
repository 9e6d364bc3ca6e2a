"""Streamed text-to-speech on Triton (decoupled): audio sentence by sentence, then the final flag.

Each sentence's audio goes out as soon as its forward pass is done, so the first sound reaches
the client after one sentence's synthesis instead of the whole text's; the last piece carries
TRITONSERVER_RESPONSE_COMPLETE_FINAL. The first sentences of all requests in a batch share one
forward pass, then the second ones, and so on. A cancelled request gets no more pieces. Inputs,
outputs and settings are those of `tts`, one text per request: docs/models/tts_stream.md.
"""

from __future__ import annotations

import numpy as np

from backends.tts.engine import TtsEngine, load_engine
from backends.tts.settings import tts_params
from serving import tts
from serving.adapters import StreamingModel
from serving.protocols import Request
from serving.streaming import Stream
from serving.tts import SpeechRow


class TritonPythonModel(StreamingModel[TtsEngine, SpeechRow]):
    """Sentence k of every request in the batch is one forward pass; pieces sent as they come."""

    params = tts_params("piper-en_US-joe-medium")
    load_engine = staticmethod(load_engine)

    def start_metrics(self) -> None:
        super().start_metrics()
        self.speech = tts.SpeechMetrics(self.name, streams=True)

    def parse(self, request: Request) -> list[SpeechRow]:
        # One text per request: every response then belongs to that one text.
        return tts.parse(request, self.engine, self.settings, max_rows=1)

    def run(self, rows: list[SpeechRow], streams: list[Stream]) -> None:
        sent = [0.0] * len(rows)  # seconds of audio each row has sent

        def send(index: int, waveform: np.ndarray, last: bool) -> None:
            sent[index] = self.speech.piece(self.engine, sent[index], waveform, self.elapsed())
            if last:
                self.speech.audio.finished(sent[index], self.elapsed())
            tensors = tts.output_tensors(self.engine, [rows[index]], [waveform])
            if last:
                streams[index].finish(tensors)
            else:
                streams[index].send(tensors)

        self.engine.stream(
            [row.speech for row in rows], send, lambda index: streams[index].cancelled()
        )
