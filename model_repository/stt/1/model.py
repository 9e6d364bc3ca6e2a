"""Speech-to-text on Triton: audio of any length in, text (and segments) out, one batch.

The work is in `backends.stt.engine.WhisperEngine`; this file maps Triton tensors to engine
rows and back, and records the audio metrics (`serving.metrics`). Contract and settings:
docs/models/stt.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from backends.stt.engine import SttRow, Transcription, WhisperEngine
from backends.stt.settings import stt_params
from serving import metrics, tensors
from serving.adapters import UnaryModel
from serving.batch import run_batch
from serving.budget import in_groups
from serving.protocols import Request, Response
from shared.audio import declared_seconds, decode_audio
from shared.errors import RequestError, invalid

Heard = tuple[SttRow, Transcription]


class TritonPythonModel(UnaryModel[WhisperEngine, SttRow, Heard]):
    """Whisper served with dynamic batching: one generate() call per group of equal options."""

    params = stt_params("whisper-tiny.en")
    load_engine = staticmethod(WhisperEngine.load)

    def start_metrics(self) -> None:
        super().start_metrics()
        self.audio = metrics.AudioMetrics(self.name)
        self.windows = metrics.Family(metrics.WINDOWS, self.name)

    def execute(self, requests: list[Request]) -> list[Any]:
        """`UnaryModel.execute` in groups of requests whose audio, as the files' headers
        declare it, stays within max_batch_audio_seconds (`serving.budget`): a group's audio
        is decoded, run and released before the next group's is decoded, so a batch of long
        requests never holds all of its decoded audio at once."""
        self.started = time.perf_counter()

        def run(group: list[Request]) -> Sequence[Any]:
            return run_batch(
                group, self.parse, self._run, self.respond, self.name, self.errors, self.splits
            )

        budget = self.settings["max_batch_audio_seconds"]
        return in_groups(requests, self.declared_seconds, budget, run)

    def declared_seconds(self, request: Request) -> float:
        """The seconds of audio the request's files declare, read before decoding; 0 for a
        request that parse() refuses anyway."""
        try:
            rows = tensors.request_rows(request, "audio")
            max_bytes = self.settings["max_audio_bytes"]
            audio = tensors.bytes_column(request, "audio", rows, max_bytes=max_bytes) or []
        except RequestError:
            return 0.0
        return sum(map(declared_seconds, audio))

    def parse(self, request: Request) -> list[SttRow]:
        rows = tensors.request_rows(request, "audio")
        max_bytes = self.settings["max_audio_bytes"]
        audio = tensors.bytes_column(request, "audio", rows, max_bytes=max_bytes)
        assert audio is not None  # request_rows found it
        self.check_batch_audio(audio)
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

    def check_batch_audio(self, audio: list[bytes]) -> None:
        """A request whose rows declare more audio than one batch may hold is refused before
        decoding (one row over max_audio_seconds is left to decoding, which names that)."""
        declared = sum(map(declared_seconds, audio))
        budget = self.settings["max_batch_audio_seconds"]
        if declared > budget and (len(audio) > 1 or declared <= self.settings["max_audio_seconds"]):
            raise invalid(
                f"input 'audio' is {declared:.1f} s of audio in {len(audio)} rows; one batch "
                f"holds at most {budget:g} s (max_batch_audio_seconds)"
            )

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
