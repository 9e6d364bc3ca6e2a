"""Speech-to-text engine: the Whisper family through transformers, one batched call per group.

Used by `model_repository/stt`, but plain Python: it never imports Triton, so it runs and is
tested in-process, and the benchmarks compare it served against in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.stt.batching import group_by_key
from backends.stt.features import long_form_features
from shared.errors import invalid
from shared.loading import Loaded, LoadPlan, load_pretrained
from shared.logs import quiet_repeated_warnings
from shared.params import check_temperature

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class Transcription:
    """What a client gets back for one audio row."""

    text: str
    segments: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class SttRow:
    """One audio row with its already-validated options.

    `language` is None for "detect" (multilingual) or "not applicable" (English-only models).
    """

    audio: np.ndarray  # mono float32 at the feature extractor's rate
    language: str | None = None
    task: str = "transcribe"
    max_new_tokens: int | None = None
    temperature: float = 0.0
    want_segments: bool = False


class WhisperEngine:
    """A loaded Whisper checkpoint that transcribes batches of rows."""

    def __init__(
        self, loaded: Loaded, max_new_tokens_limit: int, max_pass_seconds: float = 1800.0
    ) -> None:
        self._loaded = loaded
        self.max_pass_seconds = max_pass_seconds
        self.model = loaded.model
        self.processor = loaded.processor
        self.sampling_rate: int = int(self.processor.feature_extractor.sampling_rate)
        extractor = self.processor.feature_extractor
        self.window_seconds: float = extractor.n_samples / extractor.sampling_rate
        gen = self.model.generation_config
        self.multilingual: bool = bool(getattr(gen, "is_multilingual", False))
        self.languages: dict[str, str] = dict(getattr(gen, "lang_to_id", {}) or {})
        # The decoder's positions bound the tokens one window can produce (prompt included).
        prompt_room = 4
        self.max_new_tokens_limit = min(
            max_new_tokens_limit, self.model.config.max_target_positions - prompt_room
        )

    @classmethod
    def load(cls, plan: LoadPlan) -> WhisperEngine:
        """The checkpoint of `plan`; its `max_new_tokens` setting bounds every window."""
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        quiet_repeated_warnings()
        loaded = load_pretrained(
            AutoModelForSpeechSeq2Seq, AutoProcessor, plan.model_dir, plan.placement
        )
        return cls(loaded, plan.settings["max_new_tokens"], plan.settings["max_pass_audio_seconds"])

    def describe(self) -> str:
        kind = "multilingual" if self.multilingual else "English-only"
        return f"whisper ({kind}) {self._loaded.describe()}"

    @property
    def footprint_bytes(self) -> int:
        return self._loaded.footprint_bytes

    # --- option validation: per row, so a bad row fails only its own request -----------------

    def check_language(self, language: str | None) -> str | None:
        """Normalise a language code or name to the checkpoint's code, or refuse it."""
        if language is None or language == "":
            return None
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        lowered = language.strip().lower()
        code = TO_LANGUAGE_CODE.get(lowered, lowered)
        if not self.multilingual:
            if code == "en":
                return None
            raise invalid(
                f"input 'language' is {language!r}, but this checkpoint is English-only; "
                "send 'en' or leave it out"
            )
        if f"<|{code}|>" not in self.languages:
            raise invalid(
                f"input 'language' is {language!r}, which this checkpoint does not know; "
                f"use one of {len(self.languages)} codes such as 'en', 'fr', 'de'"
            )
        return code

    def check_task(self, task: str | None) -> str:
        task = (task or "transcribe").strip().lower()
        if task not in TASKS:
            raise invalid(f"input 'task' is {task!r}; allowed: {', '.join(TASKS)}")
        if task == "translate" and not self.multilingual:
            raise invalid("input 'task' is 'translate', but this checkpoint is English-only")
        return task

    def check_max_new_tokens(self, value: int | None) -> int | None:
        if value is None:
            return None
        if not 1 <= value <= self.max_new_tokens_limit:
            raise invalid(
                f"input 'max_new_tokens' is {value}; allowed: 1 to {self.max_new_tokens_limit}"
            )
        return value

    @staticmethod
    def check_temperature(value: float | None) -> float:
        """0 (greedy) when not given; tiny values are greedy too (`shared.params`)."""
        return 0.0 if value is None else check_temperature(value)

    # --- execution ------------------------------------------------------------------------

    def transcribe(self, rows: list[SttRow]) -> list[Transcription]:
        """Transcribe all rows, one `generate()` call per group of rows with equal options."""
        keys = [
            (
                row.task,
                row.temperature,
                row.max_new_tokens,
                self._is_long(row) or row.want_segments,
                self._is_long(row),
                row.language is not None,
            )
            for row in rows
        ]
        results: dict[int, Transcription] = {}
        for indices in group_by_key(keys).values():
            for chunk in self._passes(indices, rows):
                group = [rows[i] for i in chunk]
                results.update(zip(chunk, self._generate(group), strict=True))
        return [results[i] for i in range(len(rows))]

    def _passes(self, indices: list[int], rows: list[SttRow]) -> list[list[int]]:
        """`indices` in generate() calls whose rows x longest row stays within
        max_pass_audio_seconds: a batch is padded to its longest row, so that product is what
        its features and the encoder's activations cost. Shortest rows first, so that rows
        of like length share a pass; a row longer than the budget runs alone."""
        passes: list[list[int]] = []
        longest = 0.0
        for index in sorted(indices, key=lambda i: rows[i].audio.shape[0]):
            seconds = self.seconds(rows[index])
            if passes and (len(passes[-1]) + 1) * max(longest, seconds) <= self.max_pass_seconds:
                passes[-1].append(index)
            else:
                passes.append([index])
            longest = seconds  # sorted: the newest row is the pass's longest
        return passes

    def _is_long(self, row: SttRow) -> bool:
        return row.audio.shape[0] > self.window_seconds * self.sampling_rate

    def seconds(self, row: SttRow) -> float:
        """How long the row's audio is."""
        return row.audio.shape[0] / self.sampling_rate

    def windows(self, row: SttRow) -> int:
        """The windows the model's encoder reads the row's audio in (the last one partly
        filled; long-form decoding may revisit part of one)."""
        return max(1, math.ceil(row.audio.shape[0] / (self.window_seconds * self.sampling_rate)))

    def _generate(self, rows: list[SttRow]) -> list[Transcription]:
        import torch
        from transformers import LogitsProcessorList

        from backends.scores import FiniteScores

        first = rows[0]
        long_form = self._is_long(first)
        timestamps = long_form or first.want_segments
        audio = [row.audio for row in rows]
        if long_form:
            # The whole clip's features (generate() walks them window by window), made a
            # window at a time: the extractor's own spectrogram of 30 minutes at once cost
            # about 1.1 GB (backends/stt/features.py). Each row is zero-padded to whole
            # feature frames: the batch's attention mask counts ceil(n / hop) frames where a
            # lone clip's features hold floor(n / hop), which made a long clip's last window
            # differ between batched and alone. Under 10 ms of silence is added.
            input_features, attention_mask = long_form_features(
                audio, self.processor.feature_extractor
            )
        else:
            features = self.processor(
                audio,
                sampling_rate=self.sampling_rate,
                return_tensors="pt",
                return_attention_mask=True,
            )
            input_features, attention_mask = features.input_features, features.attention_mask
        kwargs: dict[str, Any] = {
            "input_features": input_features.to(self.model.device, self.model.dtype),
            "attention_mask": attention_mask.to(self.model.device),
            "return_timestamps": timestamps,
            "return_segments": timestamps,
        }
        if self.multilingual:
            kwargs["task"] = first.task
            if first.language is not None:
                kwargs["language"] = [row.language for row in rows]
        if first.max_new_tokens is not None:
            kwargs["max_new_tokens"] = first.max_new_tokens
        if first.temperature > 0:
            kwargs.update(
                do_sample=True,
                temperature=first.temperature,
                logits_processor=LogitsProcessorList([FiniteScores()]),
            )
        else:
            kwargs["do_sample"] = False
        with torch.inference_mode():
            output = self.model.generate(**kwargs)
        sequences = output["sequences"] if isinstance(output, dict) else output
        texts = self.processor.batch_decode(sequences, skip_special_tokens=True)
        if not timestamps:
            return [Transcription(text=text.strip()) for text in texts]
        return [
            Transcription(text=text.strip(), segments=self._segments(segments))
            for text, segments in zip(texts, output["segments"], strict=True)
        ]

    def _segments(self, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tokenizer = self.processor.tokenizer
        return [
            {
                "start": round(float(seg["start"]), 2),
                "end": round(float(seg["end"]), 2),
                "text": tokenizer.decode(seg["tokens"], skip_special_tokens=True).strip(),
            }
            for seg in segments
        ]
