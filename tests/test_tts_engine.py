"""The TTS engines in-process: batching never changes a row's audio, and each engine computes
what transformers computes for that row alone.

Batch invariance is checked with `np.testing.assert_allclose(atol=ATOL, rtol=0)` on the float32
waveforms (in [-1, 1]) and exact equality of their lengths: a padded batch runs the same
arithmetic in other shapes, so the last bits differ (seen: up to 7e-5), but a row's length,
which a single flipped duration or stop decision would change, must not.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.tts.engine import (
    TextLimits,
    TtsEngine,
    Utterance,
    engine_class,
    hifigan_context_frames,
    load_engine,
    sentence_seed,
)
from backends.tts.settings import tts_params
from backends.tts.speecht5 import SpeechT5Engine
from backends.tts.vits import VitsEngine
from shared.errors import ModelLoadError, RequestError
from shared.loading import LoadPlan
from shared.quantization import Placement

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 5e-4
CPU = Placement("cpu", "float32", "none")
TEXTS = ["Hello there, how are you?", "Fine.", "The sun is warm, the wind is light."]

TTS_SETTINGS = tts_params("piper-en_US-joe-medium")


@pytest.fixture(scope="module")
def engines(model_store: Path) -> Iterator[dict[str, TtsEngine]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_STORE", str(model_store))
        yield {
            name: load_engine(LoadPlan.in_process(model_store / path, CPU, TTS_SETTINGS))
            for name, path in [("vits", "vits-tiny-random"), ("speecht5", "speecht5-tiny-random")]
        }


def utterances(engine: TtsEngine) -> list[Utterance]:
    return [
        Utterance(text, voice=i % len(engine.voices), speaking_rate=1.0, seed=100 + i)
        for i, text in enumerate(TEXTS)
    ]


def assert_same_audio(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert [x.shape for x in a] == [x.shape for x in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["vits", "speecht5"])
def test_a_row_sounds_the_same_alone_and_in_a_padded_batch(
    engines: dict[str, TtsEngine], name: str
) -> None:
    engine = engines[name]
    batch = utterances(engine)
    together = engine.synthesize(batch)
    alone = [engine.synthesize([u])[0] for u in batch]
    assert_same_audio(together, alone)
    assert len({x.shape[0] for x in together}) == len(together), "rows have their own lengths"
    assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in together)
    # Reversed order and a call limit of one row: still the same audio.
    assert_same_audio(engine.synthesize(batch[::-1]), together[::-1])


@pytest.mark.parametrize("name", ["vits", "speecht5"])
def test_seed_voice_and_rate_each_change_the_audio(
    engines: dict[str, TtsEngine], name: str
) -> None:
    engine = engines[name]
    base = Utterance(TEXTS[0], voice=0, speaking_rate=1.0, seed=7)
    variants = [
        base,
        Utterance(TEXTS[0], voice=0, speaking_rate=1.0, seed=8),
        Utterance(TEXTS[0], voice=1, speaking_rate=1.0, seed=7),
        Utterance(TEXTS[0], voice=0, speaking_rate=2.0, seed=7),
    ]
    same, other_seed, other_voice, faster = engine.synthesize(variants)
    alone = engine.synthesize([base])[0]
    np.testing.assert_array_equal(engine.synthesize([base])[0], alone)  # bit for bit
    assert_same_audio([same], [alone])
    for changed in (other_seed, other_voice):
        assert changed.shape != same.shape or not np.allclose(changed, same, atol=1e-3)
    # Twice the rate, about half the duration (VITS: durations are rounded up per token).
    assert 0.4 < faster.shape[0] / same.shape[0] < 0.65


def test_vits_row_is_what_vits_model_gives_it_alone(engines: dict[str, TtsEngine]) -> None:
    """With torch's global seed set as the row's seed, VitsModel.forward draws the same noise.

    The last `margin_frames` frames are left out: transformers' decoder sees its convolutions'
    zero padding there, the engine sees zero frames (the same for every row, alone or batched).
    """
    engine = engines["vits"]
    assert isinstance(engine, VitsEngine)
    tokenizer = engine.front_end.tokenizer  # type: ignore[attr-defined]
    for utterance in utterances(engine):
        (mine,) = engine.synthesize([utterance])
        inputs = tokenizer(utterance.text, return_tensors="pt")
        torch.manual_seed(utterance.seed)
        with torch.inference_mode():
            out = engine.model(**inputs, speaker_id=utterance.voice)
        assert int(out.sequence_lengths[0]) == mine.shape[0]
        reference = out.waveform[0, : mine.shape[0]].numpy()
        keep = mine.shape[0] - engine.margin_frames * engine.hop
        np.testing.assert_allclose(mine[:keep], reference[:keep], atol=ATOL, rtol=0)


@pytest.mark.parametrize("stop_bias", [None, 0.0], ids=["length-limit", "stop-token"])
def test_speecht5_row_is_what_generate_speech_gives_it_alone(
    engines: dict[str, TtsEngine], monkeypatch: pytest.MonkeyPatch, stop_bias: float | None
) -> None:
    """With the prenet dropout switched off on both sides (its masks are drawn differently),
    the spectrogram equals transformers' generate_speech for the row alone, stop included.

    The tiny checkpoint never stops by its stop token (every row runs to its own length
    limit); with the stop bias raised to 0, every row stops by it at once.
    """
    from transformers.models.speecht5 import modeling_speecht5

    engine = engines["speecht5"]
    assert isinstance(engine, SpeechT5Engine)
    monkeypatch.setattr(
        modeling_speecht5.SpeechT5SpeechDecoderPrenet,
        "_consistent_dropout",
        lambda self, inputs, p: inputs / (1 - p),
    )
    monkeypatch.setattr(SpeechT5Engine, "_dropout", staticmethod(lambda h, keep, p: h / (1 - p)))
    bias = engine.model.speech_decoder_postnet.prob_out.bias
    saved = bias.detach().clone()
    if stop_bias is not None:
        with torch.no_grad():
            bias.fill_(stop_bias)
    try:
        lengths = _compare_with_generate_speech(engine)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    ids = engine.front_end.encode(TEXTS)
    limits = [int(len(row) * engine.maxlenratio / 2) * 2 for row in ids]
    assert lengths == (limits if stop_bias is None else [2] * len(ids))


def _compare_with_generate_speech(engine: SpeechT5Engine) -> list[int]:
    ids = engine.front_end.encode(TEXTS)
    lengths = []
    for row, utterance in zip(ids, utterances(engine), strict=True):
        speaker = engine._speakers[[utterance.voice]]
        input_ids = torch.tensor([row])
        with torch.inference_mode():
            reference = engine.model.generate_speech(input_ids, speaker)
            (mine,) = engine._decode(
                input_ids, torch.ones_like(input_ids), speaker, [torch.Generator()]
            )
        assert mine.shape == reference.shape
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
        lengths.append(mine.shape[0])
    return lengths


@pytest.mark.parametrize("name", ["vits", "speecht5"])
def test_vocoder_margin_hides_whatever_follows_a_row(
    engines: dict[str, TtsEngine], name: str
) -> None:
    """The kept samples of a row followed by `margin_frames` zero frames do not depend on what
    comes after those frames; without the margin they do (so the check is not vacuous)."""
    engine = engines[name]
    vits = isinstance(engine, VitsEngine)
    decoder = engine.model.decoder if vits else engine.vocoder  # type: ignore[attr-defined]
    channels = engine.model.config.flow_size if vits else 80  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(0)
    frames, margin, hop = 40, engine.margin_frames, engine.hop  # type: ignore[attr-defined]
    row = torch.randn((1, channels, frames), generator=generator)
    tail = torch.randn((1, channels, 30), generator=generator)

    def kept(*parts: torch.Tensor) -> np.ndarray:
        spectrogram = torch.cat(parts, dim=2)
        with torch.inference_mode():
            out = decoder(spectrogram) if vits else decoder(spectrogram.transpose(1, 2))
        return out.reshape(-1)[: frames * hop].numpy()

    zeros = torch.zeros((1, channels, margin))
    np.testing.assert_allclose(kept(row, zeros), kept(row, zeros, tail), atol=1e-5, rtol=0)
    assert not np.allclose(kept(row), kept(row, tail), atol=1e-3)


def test_context_frames_of_the_mms_tts_vocoder() -> None:
    # MMS-TTS: conv_pre reaches 3 frames. Each stage: its transposed conv reaches
    # ceil(16 / 8) = 2 (then ceil(4 / 2) = 2) of its input samples, then ResBlock1 with kernel
    # 11 and dilations 1, 3, 5 reaches 5 * 9 + 5 * 3 = 60 of its output samples; samples are
    # 1/8, 1/64, 1/128, 1/256 of a frame after each stage. conv_post reaches 3 samples.
    frames = hifigan_context_frames([8, 8, 2, 2], [16, 16, 4, 4], [3, 7, 11], [[1, 3, 5]] * 3)
    expected = 3 + (2 + 60 / 8) + (2 / 8 + 60 / 64) + (2 / 64 + 60 / 128) + (2 / 128 + 60 / 256)
    expected += 3 / 256
    assert frames == int(np.ceil(expected)) + 1


@pytest.mark.parametrize("name", ["vits", "speecht5"])
def test_streamed_pieces_join_to_the_whole_and_stop_on_cancel(
    engines: dict[str, TtsEngine], name: str
) -> None:
    engine = engines[name]
    rows = [
        engine.row("First one. Second one here. Third.", seed=5),
        engine.row("Only one sentence.", voice=engine.voices[-1], seed=6),
    ]
    assert [len(r.sentences) for r in rows] == [3, 1]
    whole = engine.speak(rows)
    sent: list[tuple[int, np.ndarray, bool]] = []
    engine.stream(rows, lambda i, audio, last: sent.append((i, audio, last)), lambda i: False)
    assert [(i, last) for i, _, last in sent] == [(0, False), (1, True), (0, False), (0, True)]
    for index in (0, 1):
        pieces = [audio for i, audio, _ in sent if i == index]
        assert_same_audio([np.concatenate(pieces)], [whole[index]])
    # Row 0 cancelled after its first piece: nothing more is synthesised for it.
    cancelled: set[int] = set()
    calls: list[int] = []
    original = engine.synthesize

    def counting(batch: list[Utterance]) -> list[np.ndarray]:
        calls.append(len(batch))
        return original(batch)

    engine.synthesize = counting  # type: ignore[method-assign]
    try:
        sent.clear()
        engine.stream(
            rows,
            lambda i, audio, last: (sent.append((i, audio, last)), cancelled.add(0)),
            lambda i: i in cancelled,
        )
    finally:
        del engine.synthesize
    assert [(i, last) for i, _, last in sent] == [(0, False), (1, True)]
    assert calls == [2]


def test_sentences_of_a_long_text_share_forward_passes(engines: dict[str, TtsEngine]) -> None:
    engine = engines["vits"]
    limited = VitsEngine(engine._loaded, engine.front_end, TextLimits(max_batch_sentences=2))
    text = " ".join(f"Sentence number {word}." for word in ["one", "two", "three", "four"])
    calls: list[int] = []
    forward = limited._forward

    def spy(ids: list[list[int]], batch: list[Utterance]) -> list[np.ndarray]:
        calls.append(len(ids))
        return forward(ids, batch)

    limited._forward = spy  # type: ignore[method-assign]
    rows = [limited.row(text, seed=1), limited.row("Short.", seed=2)]
    audio = limited.speak(rows)
    assert calls == [2, 2, 1]  # five sentences, at most two per pass
    assert_same_audio(audio, engine.speak(rows))
    # The joined row holds every sentence and a pause between each two.
    pieces = engine.synthesize(
        [Utterance(s, 0, 1.0, sentence_seed(1, k)) for k, s in enumerate(rows[0].sentences)]
    )
    pause = round(TextLimits().sentence_pause_seconds * engine.sampling_rate)
    assert audio[0].shape[0] == sum(p.shape[0] for p in pieces) + 3 * pause


def limited(engine: TtsEngine, **limits: float) -> TtsEngine:
    """The same loaded engine with other limits."""
    clone = copy.copy(engine)
    clone.limits = TextLimits(**limits)  # type: ignore[arg-type]
    return clone


def spy_passes(engine: TtsEngine) -> list[float]:
    """Record each forward pass's padded audio (rows x longest row, in seconds)."""
    passes: list[float] = []
    forward = engine._forward

    def spy(ids: list[list[int]], batch: list[Utterance]) -> list[np.ndarray]:
        passes.append(engine.seconds(len(batch) * max(u.frames or 0 for u in batch)))
        return forward(ids, batch)

    engine._forward = spy  # type: ignore[method-assign]
    return passes


@pytest.mark.parametrize("name", ["vits", "speecht5"])
def test_predicted_frames_are_what_synthesis_makes_or_bound_it(
    engines: dict[str, TtsEngine], name: str
) -> None:
    engine = engines[name]
    for rate in (0.5, 1.0, 2.0):
        batch = [replace(u, speaking_rate=rate) for u in utterances(engine)]
        ids = [list(row) for row in engine.encode([u.text for u in batch])]
        predicted = [n * engine.hop for n in engine.predict_frames(ids, batch)]
        made = [a.shape[0] for a in engine.synthesize(batch)]
        if name == "vits":  # the duration predictor's frames, exactly
            assert made == predicted
        else:  # SpeechT5 stops by itself: its bound holds
            assert all(m <= p for m, p in zip(made, predicted, strict=True))


def test_text_is_counted_once_normalised(engines: dict[str, TtsEngine]) -> None:
    """One character can be many once normalised: U+FDFA is 18 characters of speech."""
    with pytest.raises(RequestError) as info:
        engines["vits"].prepare("\ufdfa" * 200)
    assert "is 3600 characters once normalised (NFKC); the limit is 2000" in info.value.message


def test_audio_over_the_budgets_is_refused_before_synthesis(
    engines: dict[str, TtsEngine],
) -> None:
    vits = engines["vits"]
    text = "Hello there, how are you? Fine, thanks."
    row = vits.row(text, seed=1)
    seconds = [vits.seconds(n) for n in row.frames or ()]
    total = sum(seconds) + TextLimits().sentence_pause_seconds * (len(seconds) - 1)
    slow = vits.row(text, seed=1, speaking_rate=0.5)
    assert sum(slow.frames or ()) > 1.5 * sum(row.frames or ())  # slower speech: more audio
    cases = [
        ({"max_audio_seconds": total - 0.05}, f"would be {total:.1f} s of audio", "(max_audio"),
        (
            {"max_pass_audio_seconds": max(seconds) - 0.01},
            f"sentence {seconds.index(max(seconds))} would be",
            "(max_pass_audio_seconds)",
        ),
    ]
    for settings, *expected in cases:
        tight = limited(vits, **settings)
        passes = spy_passes(tight)
        with pytest.raises(RequestError) as info:
            tight.speak([tight.row(text, seed=1)])
        assert info.value.message.startswith("input 'text' ")
        assert all(part in info.value.message for part in expected), info.value.message
        assert passes == []  # refused before any audio was made
    assert limited(vits, max_audio_seconds=total + 0.05).row(text, seed=1) == row


def test_passes_stay_within_the_audio_budget(engines: dict[str, TtsEngine]) -> None:
    vits = engines["vits"]
    rows = [vits.row(text, seed=i) for i, text in enumerate(TEXTS * 3)]
    longest = max(vits.seconds(n) for row in rows for n in row.frames or ())
    small = limited(vits, max_pass_audio_seconds=2.5 * longest)
    passes = spy_passes(small)
    audio = small.speak(rows)
    assert len(passes) > 1 and max(passes) <= 2.5 * longest
    assert_same_audio(audio, vits.speak(rows))


def test_option_checks_name_the_input_and_the_limit(engines: dict[str, TtsEngine]) -> None:
    vits, speecht5 = engines["vits"], engines["speecht5"]
    cases = [
        (lambda: vits.check_voice("7"), "input 'voice' is '7'", "3 voice(s): '0', '1', '2'"),
        (lambda: speecht5.check_voice("0"), "input 'voice' is '0'", "'speaker-a'"),
        (lambda: vits.check_speaking_rate(0.1), "input 'speaking_rate' is 0.1", "0.25 to 4.0"),
        (lambda: vits.check_speaking_rate(float("nan")), "'speaking_rate' is nan", "0.25 to 4.0"),
        (lambda: vits.prepare(""), "input 'text' is empty", ""),
        (lambda: vits.prepare("x" * 2001), "2001 characters", "limit is 2000 (max_text_chars)"),
        (lambda: vits.prepare("?! ... 日本語"), "input 'text' has nothing", "letter or digit"),
    ]
    for call, *expected in cases:
        with pytest.raises(RequestError) as info:
            call()
        assert info.value.code.value == "INVALID_ARG"
        assert all(part in info.value.message for part in expected), info.value.message
    assert vits.check_voice(None) == vits.check_voice(" ") == 0
    assert speecht5.check_voice("speaker-b") == 1
    assert 0 <= vits.check_seed(None) < 2**63 and vits.check_seed(-1) == 2**63 - 1


def test_front_ends_drop_what_the_voice_cannot_say(engines: dict[str, TtsEngine]) -> None:
    # MMS-TTS: letters (its tokenizer lower-cases them), digits, space, apostrophe, hyphen; no
    # punctuation, which still marks the sentences before it is dropped.
    assert engines["vits"].prepare("Hello, World! It's 42 — ok?") == ("Hello World", "It's 42 ok")
    # SpeechT5's pieces know punctuation and capitals, not "é" or "日".
    assert engines["speecht5"].prepare("Café 日本 opens. At 10!") == ("Caf opens.", "At 10!")
    # A sentence with nothing left is skipped, the rest is spoken.
    assert engines["vits"].prepare("日本語です。 Then English.") == ("Then English",)


def test_engine_is_chosen_by_the_checkpoint(model_store: Path, tmp_path: Path) -> None:
    assert engine_class(model_store / "vits-tiny-random") is VitsEngine
    assert engine_class(model_store / "speecht5-tiny-random") is SpeechT5Engine
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}', encoding="utf-8")
    with pytest.raises(ModelLoadError, match="'whisper' checkpoint; the TTS models serve"):
        engine_class(tmp_path)


def test_speecht5_needs_its_voices_and_refuses_4_bit_on_the_cpu(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.setenv("MODEL_STORE", str(tmp_path))
    copy = tmp_path / "speecht5"
    shutil.copytree(model_store / "speecht5-tiny-random", copy)
    (copy / "voices.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="voices.safetensors is missing"):
        load_engine(LoadPlan.in_process(copy, CPU, TTS_SETTINGS))
    with pytest.raises(ModelLoadError, match="'nf4' cannot run SpeechT5 on the CPU"):
        load_engine(LoadPlan.in_process(copy, Placement("cpu", "float32", "nf4"), TTS_SETTINGS))
    with pytest.raises(ModelLoadError, match="outside the model store"):
        load_engine(LoadPlan.in_process(copy, CPU, TTS_SETTINGS, vocoder_path=str(model_store)))


@pytest.mark.parametrize("path", ["vits-tiny-random", "speecht5-tiny-random"])
def test_int4_packs_what_it_can_and_a_row_still_sounds_the_same_alone(
    model_store: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int4 (bfloat16) packs the linear layers; SpeechT5's prenet, which reads 80 mel bins
    (not a multiple of 32), stays unpacked instead of refusing the load as nf4 must. Batched
    and alone agree to bfloat16 precision (SpeechT5's samples differ by up to ~0.1 in
    bfloat16 with or without int4; its autoregressive decoder carries the rounding along)."""
    monkeypatch.setenv("MODEL_STORE", str(model_store))
    engine = load_engine(
        LoadPlan.in_process(model_store / path, Placement("cpu", "bfloat16", "int4"), TTS_SETTINGS)
    )
    assert "int4 linear layers:" in engine.describe()
    batch = utterances(engine)
    together = engine.synthesize(batch)
    alone = [engine.synthesize([u])[0] for u in batch]
    assert [x.shape for x in together] == [x.shape for x in alone]
    for x, y in zip(together, alone, strict=True):
        assert np.isfinite(x).all() and np.abs(x).max() > 0
        assert np.corrcoef(x, y)[0, 1] > 0.999
