"""Speech-to-text on Triton: audio of any length in, text (and segments) out, one batch.

The work is in `backends.stt.engine.WhisperEngine`; this file maps Triton tensors to engine
rows and back, and records the audio metrics (`serving.metrics`). Contract and settings:
docs/models/stt.md.
"""

from __future__ import annotations

from backends.stt.engine import SttRow, Transcription, WhisperEngine
from backends.stt.settings import stt_params
from serving import metrics, tensors
from serving.adapters import UnaryModel
from serving.protocols import Request, Response
from shared.audio import decode_audio

Heard = tuple[SttRow, Transcription]


class TritonPythonModel(UnaryModel[WhisperEngine, SttRow, Heard]):
    """Whisper served with dynamic batching: one generate() call per group of equal options."""

    params = stt_params("whisper-tiny.en")
    load_engine = staticmethod(WhisperEngine.load)

    def start_metrics(self) -> None:
        super().start_metrics()
        self.audio = metrics.AudioMetrics(self.name)
        self.windows = metrics.Family(metrics.WINDOWS, self.name)

    def parse(self, request: Request) -> list[SttRow]:
        rows = tensors.request_rows(request, "audio")
        max_bytes = self.settings["max_audio_bytes"]
        audio = tensors.bytes_column(request, "audio", rows, max_bytes=max_bytes)
        assert audio is not None  # request_rows found it
        language = tensors.text_column(request, "language", rows, max_chars=32) or [None] * rows
        task = tensors.text_column(request, "task", rows, max_chars=32) or [None] * rows
        max_new = tensors.number_column(request, "max_new_tokens", rows, int) or [None] * rows
        temperature = tensors.number_column(request, "temperature", rows, float) or [None] * rows
        stamps = tensors.number_column(request, "return_timestamps", rows, bool) or [False] * rows
        engine = self.engine
        return [
            SttRow(
                audio=decode_audio(
                    audio[i],
                    target_rate=engine.sampling_rate,
                    max_seconds=self.settings["max_audio_seconds"],
                    max_bytes=max_bytes,
                    max_samples=self.settings["max_audio_samples"],
                ),
                language=engine.check_language(language[i]),
                task=engine.check_task(task[i]),
                max_new_tokens=engine.check_max_new_tokens(max_new[i]),
                temperature=engine.check_temperature(temperature[i]),
                want_segments=stamps[i],
            )
            for i in range(rows)
        ]

    def run(self, rows: list[SttRow]) -> list[Heard]:
        return list(zip(rows, self.engine.transcribe(rows), strict=True))

    def respond(self, request: Request, results: list[Heard]) -> Response:
        rows = [row for row, _ in results]
        self.audio.record(sum(map(self.engine.seconds, rows)), self.elapsed())
        self.windows.observe(sum(map(self.engine.windows, rows)))
        return tensors.response(
            tensors.bytes_tensor("text", [r.text for _, r in results]),
            tensors.json_tensor("segments", [r.segments for _, r in results]),
        )
