"""Text-to-speech engines: validated rows in, batched synthesis, one waveform per row out.

Used by `model_repository/tts` and `model_repository/tts_stream`, but plain Python: it never
imports Triton, so it runs and is tested in-process.

What every architecture shares lives here: text preparation (through a pluggable `FrontEnd`),
option checks, per-sentence seeds, how sentences become batched calls, joining sentences with a
pause, and sentence-by-sentence streaming. What differs lives in one subclass per architecture,
chosen by the checkpoint's config.json (`ENGINES`):

* `backends.tts.vits.VitsEngine`: VITS (MMS-TTS), non-autoregressive, speaker ids, per-row noise;
* `backends.tts.piper.PiperEngine`: a Piper voice, a VITS whose decoder has "ResBlock2" blocks
  and whose input is espeak-ng phonemes (the default voice);
* `backends.tts.speecht5.SpeechT5Engine`: SpeechT5, an autoregressive mel decoder, speaker
  embeddings (x-vectors) as voices and a separate HiFi-GAN vocoder.

Text becomes model input ids while a request is validated (`TtsEngine.row`), not inside the
batched call: a front end that refuses a sentence (or breaks: espeak-ng missing) fails only
that request. A subclass implements `_forward(ids, utterances)`: ONE padded call for all utterances given,
each waveform cut to its own length. `synthesize` sorts utterances by length and runs them in
calls of at most `max_batch_sentences` (to bound memory), so the rows of every request in a
Triton batch share forward passes; `speak` and `stream` build on it.

Reproducibility contract: an utterance's audio depends only on its text, voice, speaking rate
and seed, never on what else is in the batch (each row draws its noise from its own generator
seeded from the request's seed and the sentence's index). So a request gives the same audio
alone or batched, and a streamed request's pieces join to the unary response.
"""

from __future__ import annotations

import importlib
import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.errors import ErrorCode, ModelLoadError, RequestError, invalid
from shared.loading import Loaded, LoadPlan
from shared.text import (
    check_length,
    drop_characters,
    is_speakable,
    normalize_text,
    require_speakable,
    split_sentences,
)

#: Speaking rates a client may ask for, relative to the voice's own (1 = as trained).
MIN_SPEAKING_RATE = 0.25
MAX_SPEAKING_RATE = 4.0
#: Seeds are taken modulo 2**63 so that any INT64 a client sends is a valid torch seed.
_SEED_MODULUS = 1 << 63

#: Engine per checkpoint kind: config.json's "tts_engine" when present, else its "model_type".
#: Values are "module:Class", imported on first use, so a new engine (a phoneme-based VITS, say)
#: is one line here plus its own module, and nothing else is imported until needed.
ENGINES: dict[str, str] = {
    "vits": "backends.tts.vits:VitsEngine",
    "piper": "backends.tts.piper:PiperEngine",
    "speecht5": "backends.tts.speecht5:SpeechT5Engine",
}


class FrontEnd(Protocol):
    """Text to model input ids: a tokenizer, or a phonemizer and a phoneme map.

    `check` returns the text the voice will speak: `text` without the characters it cannot
    take (it may raise `RequestError` for text it refuses outright). `encode` turns checked
    sentences into id rows, special tokens included, without padding.
    """

    def check(self, text: str) -> str: ...

    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...


class TokenizerFrontEnd:
    """The checkpoint's own tokenizer as a front end (MMS-TTS characters, SpeechT5 pieces).

    A character is kept when the tokenizer maps it to something other than padding, the
    unknown token or a bare space; whatever the tokenizer would drop (MMS-TTS drops
    punctuation) or turn into `<unk>` (SpeechT5) is dropped before it reaches the model.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        silent = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
        silent.update(self._ids(" "))
        self._silent = {i for i in silent if i is not None}
        self._unknown = tokenizer.unk_token_id
        self._known: dict[str, bool] = {}

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def knows(self, char: str) -> bool:
        known = self._known.get(char)
        if known is None:
            ids = self._ids(char)
            known = self._unknown not in ids and any(i not in self._silent for i in ids)
            if len(self._known) < 65_536:  # bounded: clients choose the characters
                self._known[char] = known
        return known

    def check(self, text: str) -> str:
        return drop_characters(text, self.knows)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts))["input_ids"]]


@dataclass(frozen=True)
class TextLimits:
    """Settings that bound the work one request can ask for (see the model's config.pbtxt)."""

    max_text_chars: int = 2000
    max_sentence_chars: int = 300
    sentence_pause_seconds: float = 0.2
    max_batch_sentences: int = 32
    #: Audio one request may ask for, and audio one padded forward pass may hold (its rows
    #: times its longest row): memory grows with the second, whatever the text's length.
    max_audio_seconds: float = 600.0
    max_pass_audio_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> TextLimits:
        """The limits a TTS model's settings (`backends.tts.settings`) set."""
        return cls(
            max_text_chars=settings["max_text_chars"],
            max_sentence_chars=settings["max_sentence_chars"],
            sentence_pause_seconds=settings["sentence_pause_seconds"],
            max_batch_sentences=settings["max_batch_sentences"],
            max_audio_seconds=settings["max_audio_seconds"],
            max_pass_audio_seconds=settings["max_pass_audio_seconds"],
        )


@dataclass(frozen=True)
class TtsRow:
    """One text row with its already-validated options."""

    sentences: tuple[str, ...]
    voice: int = 0  # index into the engine's voices
    speaking_rate: float = 1.0
    seed: int = 0
    #: Each sentence's model input ids, made by the front end at validation time.
    ids: tuple[tuple[int, ...], ...] | None = None
    #: Each sentence's predicted output frames (`TtsEngine.predict_frames`), also made then.
    frames: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Utterance:
    """One sentence of a row: the unit a forward pass synthesises."""

    text: str
    voice: int
    speaking_rate: float
    seed: int
    #: The front end's ids for `text`; None: encoded by `synthesize`.
    ids: tuple[int, ...] | None = None
    #: The predicted output frames; None: predicted by `synthesize`.
    frames: int | None = None


def sentence_seed(seed: int, index: int) -> int:
    """The seed of sentence `index` of a row seeded `seed`: well mixed, and the same for a
    sentence whether the row is served whole or streamed."""
    state = np.random.SeedSequence([seed % _SEED_MODULUS, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 32 | int(state[1])) % _SEED_MODULUS


def hifigan_context_frames(
    upsample_rates: Sequence[int],
    upsample_kernel_sizes: Sequence[int],
    resblock_kernel_sizes: Sequence[int],
    resblock_dilation_sizes: Sequence[Sequence[int]],
    pre_kernel: int = 7,
    post_kernel: int = 7,
) -> int:
    """How many input frames a HiFi-GAN output sample can see past its own frame.

    The vocoder has no padding mask: in a padded batch, a row's last samples see the padding
    that follows it, alone they see the convolutions' own zero padding, and the two differ.
    Every row is therefore followed by this many zero frames, alone or batched, so the samples
    that are kept never see past them. Computed for HiFi-GAN's "ResBlock1" (two convolutions
    per dilation), which bounds the one-convolution "ResBlock2" too.
    """
    frames = float((pre_kernel - 1) // 2)
    scale = 1
    for rate, kernel in zip(upsample_rates, upsample_kernel_sizes, strict=True):
        frames += -(-kernel // rate) / scale  # a transposed conv reaches ceil(k / stride) inputs
        scale *= rate
        block = max(
            sum((k - 1) // 2 * d + (k - 1) // 2 for d in dilations)
            for k, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True)
        )
        frames += block / scale
    frames += (post_kernel - 1) // 2 / scale
    return int(np.ceil(frames)) + 1


class TtsEngine(ABC):
    """A loaded TTS checkpoint that turns rows of text into waveforms, in batches."""

    #: Set by subclasses: the rate of the waveforms `_forward` returns, and the samples per
    #: output frame (the vocoder's upsampling).
    sampling_rate: int
    hop: int
    #: Voice names clients send in `voice`; the first is the default.
    voices: tuple[str, ...]

    def __init__(self, front_end: FrontEnd, limits: TextLimits, max_sentence_chars: int) -> None:
        self.front_end = front_end
        self.limits = limits
        # The model may allow fewer characters per sentence than configured (SpeechT5's
        # text positions): the smaller wins.
        self.max_sentence_chars = min(limits.max_sentence_chars, max_sentence_chars)

    # --- option validation: per row, so a bad row fails only its own request -----------------

    def prepare(self, text: str) -> tuple[str, ...]:
        """The sentences to synthesise for `text`, or INVALID_ARG naming the problem.

        Characters are counted once normalised (NFKC), on the text that is spoken: one
        character can stand for many (U+FDFA is 18). Split first, while the punctuation that
        marks sentences is there (MMS-TTS's front end drops it), then each sentence goes
        through the front end; a sentence with nothing speakable left is skipped, and text
        with none left at all is refused.
        """
        normalized = check_length(normalize_text(text), self.limits.max_text_chars)
        checked = (
            self.front_end.check(sentence)
            for sentence in split_sentences(normalized, self.max_sentence_chars)
        )
        sentences = tuple(sentence for sentence in checked if is_speakable(sentence))
        if not sentences:
            require_speakable("", text)
        return sentences

    def check_voice(self, voice: str | None) -> int:
        if voice is None or voice.strip() == "":
            return 0
        name = voice.strip()
        if name in self.voices:
            return self.voices.index(name)
        shown = ", ".join(repr(v) for v in self.voices[:8])
        more = f" and {len(self.voices) - 8} more" if len(self.voices) > 8 else ""
        raise invalid(
            f"input 'voice' is {voice!r}, which this model does not have; its "
            f"{len(self.voices)} voice(s): {shown}{more}"
        )

    @staticmethod
    def check_speaking_rate(rate: float | None) -> float:
        if rate is None:
            return 1.0
        if not np.isfinite(rate) or not MIN_SPEAKING_RATE <= rate <= MAX_SPEAKING_RATE:
            raise invalid(
                f"input 'speaking_rate' is {rate}; allowed: {MIN_SPEAKING_RATE} to "
                f"{MAX_SPEAKING_RATE} (1 is the voice's own rate)"
            )
        return float(rate)

    @staticmethod
    def check_seed(seed: int | None) -> int:
        """The client's seed, or a fresh random one (every request gets its own noise)."""
        return secrets.randbits(63) if seed is None else int(seed) % _SEED_MODULUS

    def row(
        self,
        text: str,
        voice: str | None = None,
        speaking_rate: float | None = None,
        seed: int | None = None,
    ) -> TtsRow:
        """A validated row from a client's values (None: not given), its sentences encoded and
        their audio predicted and checked against the budgets (`check_budget`)."""
        sentences = self.prepare(text)
        row = TtsRow(
            sentences=sentences,
            voice=self.check_voice(voice),
            speaking_rate=self.check_speaking_rate(speaking_rate),
            seed=self.check_seed(seed),
            ids=self.encode(sentences),
        )
        utterances = [_utterance(row, k) for k in range(len(sentences))]
        ids = [list(u.ids or ()) for u in utterances]
        frames = tuple(self.predict_frames(ids, utterances))
        self.check_budget(frames)
        return replace(row, frames=frames)

    def seconds(self, frames: int) -> float:
        return frames * self.hop / self.sampling_rate

    def check_budget(self, frames: Sequence[int]) -> None:
        """Refuse a request whose predicted audio is over `max_audio_seconds` in all, or has a
        sentence that alone is over what one forward pass may hold (`max_pass_audio_seconds`):
        checked before any audio is made, since memory grows with the audio, not the text."""
        limits = self.limits
        for index, count in enumerate(frames):
            if self.seconds(count) > limits.max_pass_audio_seconds:
                raise invalid(
                    f"input 'text' sentence {index} would be {self.seconds(count):.1f} s of "
                    f"audio; one forward pass holds at most {limits.max_pass_audio_seconds:g} s "
                    "(max_pass_audio_seconds): send shorter sentences or a faster speaking_rate"
                )
        total = self.seconds(sum(frames)) + limits.sentence_pause_seconds * (len(frames) - 1)
        if total > limits.max_audio_seconds:
            raise invalid(
                f"input 'text' would be {total:.1f} s of audio; the limit is "
                f"{limits.max_audio_seconds:g} s (max_audio_seconds)"
            )

    def encode(self, sentences: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        """The model input ids of one request's sentences, made while it is validated.

        A front end can refuse text (Piper's: a sentence that gives no phoneme the voice knows,
        INVALID_ARG) or break (espeak-ng missing or failing: PhonemizerError, INTERNAL). Done
        here, per request, either is that request's own failure, never that of the batch it
        would have joined. A refusal names the input: the front end knows only sentences.
        """
        try:
            encoded = self.front_end.encode(sentences)
        except RequestError as error:
            if error.code is not ErrorCode.INVALID_ARG:
                raise
            raise invalid(f"input 'text' {error.message}") from error
        return tuple(tuple(ids) for ids in encoded)

    # --- execution ------------------------------------------------------------------------

    def speak(self, rows: Sequence[TtsRow]) -> list[np.ndarray]:
        """One waveform per row: every sentence of every row synthesised in shared calls,
        then each row's sentences joined with a short pause."""
        utterances = [_utterance(row, k) for row in rows for k in range(len(row.sentences))]
        audio = iter(self.synthesize(utterances))
        return [self._join([next(audio) for _ in row.sentences]) for row in rows]

    def stream(
        self,
        rows: Sequence[TtsRow],
        send: Callable[[int, np.ndarray, bool], None],
        cancelled: Callable[[int], bool],
    ) -> None:
        """Sentence by sentence: call k synthesises sentence k of every row still going.

        `send(row index, audio, last)` gets each piece as soon as its call is done; every
        piece but a row's last ends with the pause, so a row's pieces joined are exactly what
        `speak` returns for it. A row whose `cancelled(index)` turns true gets nothing more.
        """
        for k in range(max((len(row.sentences) for row in rows), default=0)):
            going = [i for i, row in enumerate(rows) if k < len(row.sentences) and not cancelled(i)]
            if not going:
                return
            audio = self.synthesize([_utterance(rows[i], k) for i in going])
            for i, waveform in zip(going, audio, strict=True):
                last = k == len(rows[i].sentences) - 1
                send(i, waveform if last else np.concatenate([waveform, self._pause()]), last)

    def synthesize(self, utterances: Sequence[Utterance]) -> list[np.ndarray]:
        """One float32 waveform per utterance, at `sampling_rate`.

        Utterances are sorted by predicted length and run in padded calls of at most
        `max_batch_sentences` whose rows times longest row stay within
        `max_pass_audio_seconds` (`passes`), so each call wastes little on padding and its
        memory is bounded. Those without ids or frames (made by hand rather than by `row`)
        are encoded and predicted here first.
        """
        if not utterances:
            return []
        missing = [u.text for u in utterances if u.ids is None]
        encoded = iter(self.front_end.encode(missing) if missing else [])
        ids = [list(next(encoded) if u.ids is None else u.ids) for u in utterances]
        unknown = [i for i, u in enumerate(utterances) if u.frames is None]
        predicted = iter(
            self.predict_frames([ids[i] for i in unknown], [utterances[i] for i in unknown])
            if unknown
            else []
        )
        frames = [next(predicted) if u.frames is None else u.frames for u in utterances]
        results: dict[int, np.ndarray] = {}
        for chunk in self.passes(frames, [len(row) for row in ids]):
            waveforms = self._forward([ids[i] for i in chunk], [utterances[i] for i in chunk])
            results.update(zip(chunk, waveforms, strict=True))
        return [results[i] for i in range(len(utterances))]

    def passes(self, frames: Sequence[int], tokens: Sequence[int]) -> list[list[int]]:
        """Utterance indices grouped into padded passes, shortest first: at most
        `max_batch_sentences` each, and rows times longest row within the pass budget (an
        utterance over it alone, which `check_budget` refuses before it gets here)."""
        budget = self.limits.max_pass_audio_seconds
        order = sorted(range(len(frames)), key=lambda i: (frames[i], tokens[i]))
        passes: list[list[int]] = []
        current: list[int] = []
        for i in order:
            full = len(current) >= self.limits.max_batch_sentences
            if current and (full or self.seconds((len(current) + 1) * frames[i]) > budget):
                passes.append(current)
                current = []
            current.append(i)
        return [*passes, current] if current else passes

    @classmethod
    @abstractmethod
    def load(cls, plan: LoadPlan) -> TtsEngine:
        """Load the checkpoint of `plan` with its settings (`backends.tts.settings`)."""

    @abstractmethod
    def _forward(self, ids: list[list[int]], utterances: list[Utterance]) -> list[np.ndarray]:
        """ONE padded forward pass for these rows; each waveform cut to its own length."""

    @abstractmethod
    def predict_frames(self, ids: list[list[int]], utterances: list[Utterance]) -> list[int]:
        """Each utterance's output frames (`hop` samples each) before any audio is made: what
        `_forward` will make for it (VITS: its duration predictor), or a bound (SpeechT5)."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the load log: architecture, voices, rate, placement."""

    #: Set by each engine's constructor: the loaded model, with its footprint.
    _loaded: Loaded

    @property
    def footprint_bytes(self) -> int:
        return self._loaded.footprint_bytes

    def _pause(self) -> np.ndarray:
        return np.zeros(round(self.limits.sentence_pause_seconds * self.sampling_rate), np.float32)

    def _join(self, pieces: list[np.ndarray]) -> np.ndarray:
        joined: list[np.ndarray] = []
        for index, piece in enumerate(pieces):
            if index:
                joined.append(self._pause())
            joined.append(piece)
        return np.concatenate(joined).astype(np.float32, copy=False)


def _utterance(row: TtsRow, index: int) -> Utterance:
    return Utterance(
        text=row.sentences[index],
        voice=row.voice,
        speaking_rate=row.speaking_rate,
        seed=sentence_seed(row.seed, index),
        ids=None if row.ids is None else row.ids[index],
        frames=None if row.frames is None else row.frames[index],
    )


def engine_class(model_dir: Path) -> type[TtsEngine]:
    """The engine class for a checkpoint, from its config.json (see `ENGINES`)."""
    try:
        with open(model_dir / "config.json", encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    kind = config.get("tts_engine") or config.get("model_type")
    if kind not in ENGINES:
        raise ModelLoadError(
            f"{model_dir} holds a {kind!r} checkpoint; the TTS models serve {sorted(ENGINES)}"
        )
    module_name, class_name = ENGINES[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_engine(plan: LoadPlan) -> TtsEngine:
    """Load the checkpoint of `plan` with the engine its config names."""
    return engine_class(plan.model_dir).load(plan)
