"""Speech-to-text on Triton: parse requests, run them as one batch, respond per request.

The work is in `backends.stt.WhisperEngine` and `shared`; this file only maps Triton tensors to
engine rows and back. Inputs, outputs and settings are documented in README.md.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from backends.stt import SttRow, Transcription, WhisperEngine
from shared import triton
from shared.audio import decode_audio
from shared.loading import plan_load
from shared.params import Param, load_params

PARAMS = [
    *load_params(default_model_path="whisper-tiny.en"),
    Param("max_audio_seconds", 1800.0, parse=float, minimum=1.0, doc="longest accepted audio"),
    Param("max_audio_bytes", 64 << 20, parse=int, minimum=1024, doc="largest accepted file"),
    Param("max_new_tokens", 440, parse=int, minimum=1, doc="upper bound per 30 s window"),
]


class TritonPythonModel:
    """Whisper served with dynamic batching: one generate() call per group of equal options."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        plan = plan_load(args, PARAMS)
        self.settings = plan.settings
        self.engine = WhisperEngine.load(
            plan.model_dir, plan.placement, max_new_tokens_limit=plan.settings["max_new_tokens"]
        )
        self.errors = triton.ErrorCounter(self.name)
        pb_utils.Logger.log_info(f"{self.name}: loaded {plan.model_dir}: {self.engine.describe()}")

    def execute(self, requests: list[Any]) -> list[Any]:
        return triton.run_batch(
            requests, self._parse, self.engine.transcribe, self._respond, self.name, self.errors
        )

    def _parse(self, request: Any) -> list[SttRow]:
        rows = triton.request_rows(request, "audio")
        audio = triton.bytes_column(
            request, "audio", rows, max_bytes=self.settings["max_audio_bytes"]
        )
        language = triton.text_column(request, "language", rows, max_chars=32) or [None] * rows
        task = triton.text_column(request, "task", rows, max_chars=32) or [None] * rows
        max_new = triton.number_column(request, "max_new_tokens", rows, int) or [None] * rows
        temperature = triton.number_column(request, "temperature", rows, float) or [None] * rows
        stamps = triton.number_column(request, "return_timestamps", rows, bool) or [False] * rows
        engine = self.engine
        return [
            SttRow(
                audio=decode_audio(
                    audio[i],
                    target_rate=engine.sampling_rate,
                    max_seconds=self.settings["max_audio_seconds"],
                    max_bytes=self.settings["max_audio_bytes"],
                ),
                language=engine.check_language(language[i]),
                task=engine.check_task(task[i]),
                max_new_tokens=engine.check_max_new_tokens(max_new[i]),
                temperature=engine.check_temperature(temperature[i]),
                want_segments=stamps[i],
            )
            for i in range(rows)
        ]

    def _respond(self, request: Any, results: list[Transcription]) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                triton.bytes_tensor("text", [r.text for r in results]),
                triton.json_tensor("segments", [r.segments for r in results]),
            ]
        )
