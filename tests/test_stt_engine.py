"""The Whisper engine in-process: one generate() per group of equal options, batch invariance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backends.stt.engine import SttRow, WhisperEngine
from backends.stt.features import long_form_features
from backends.stt.settings import stt_params
from shared.errors import RequestError
from shared.loading import LoadPlan
from shared.quantization import resolve_placement

RATE = 16_000

STT_SETTINGS = stt_params("whisper-tiny.en")


def clip(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped like speech loudness: random weights only need distinct inputs."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


@pytest.fixture(scope="module")
def english(model_store: Path) -> WhisperEngine:
    return WhisperEngine.load(
        LoadPlan.in_process(
            model_store / "whisper-tiny-random",
            resolve_placement("none", "auto", "cpu"),
            STT_SETTINGS,
        )
    )


@pytest.fixture(scope="module")
def multilingual(model_store: Path) -> WhisperEngine:
    return WhisperEngine.load(
        LoadPlan.in_process(
            model_store / "whisper-large-v3-turbo-random",
            resolve_placement("none", "auto", "cpu"),
            STT_SETTINGS,
        )
    )


def count_generate_calls(engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = engine.model.generate

    def spy(*args, **kwargs):
        sizes.append(int(kwargs["input_features"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", spy)
    return sizes


def test_equal_options_make_one_generate_call(english, monkeypatch) -> None:
    sizes = count_generate_calls(english, monkeypatch)
    rows = [SttRow(audio=clip(s, i), max_new_tokens=8) for i, s in enumerate([1.0, 3.5, 0.4, 7.0])]
    english.transcribe(rows)
    assert sizes == [4]


def test_batched_equals_one_at_a_time_with_mixed_lengths(english) -> None:
    rows = [
        SttRow(audio=clip(s, i), max_new_tokens=12)
        for i, s in enumerate([0.5, 6.0, 2.2, 11.0, 1.1])
    ]
    together = [t.text for t in english.transcribe(rows)]
    alone = [english.transcribe([row])[0].text for row in rows]
    assert together == alone
    assert len(set(together)) > 1, "distinct clips should give distinct babble"


def test_different_options_are_grouped_never_forced(english, monkeypatch) -> None:
    sizes = count_generate_calls(english, monkeypatch)
    rows = [
        SttRow(audio=clip(1.0, 0), max_new_tokens=4),
        SttRow(audio=clip(1.0, 1), max_new_tokens=9),
        SttRow(audio=clip(1.0, 2), max_new_tokens=4),
    ]
    out = english.transcribe(rows)
    assert sorted(sizes) == [1, 2]
    assert out[1].text == english.transcribe([rows[1]])[0].text


def test_long_audio_uses_every_window(english) -> None:
    (result,) = english.transcribe([SttRow(audio=clip(65.0, 3), max_new_tokens=6)])
    assert result.segments is not None
    assert result.segments[-1]["end"] > 30.0, result.segments


def test_english_only_checks(english) -> None:
    assert english.check_language("en") is None and english.check_language("English") is None
    with pytest.raises(RequestError, match="English-only"):
        english.check_language("de")
    with pytest.raises(RequestError, match="English-only"):
        english.check_task("translate")
    with pytest.raises(RequestError, match="allowed: 1 to"):
        english.check_max_new_tokens(100_000)


def test_multilingual_language_per_row_in_one_call(multilingual, monkeypatch) -> None:
    assert multilingual.multilingual and multilingual.model.config.num_mel_bins == 128
    assert multilingual.check_language("French") == "fr"
    with pytest.raises(RequestError, match="does not know"):
        multilingual.check_language("klingon")
    sizes = count_generate_calls(multilingual, monkeypatch)
    rows = [
        SttRow(audio=clip(1.0, i), language=lang, max_new_tokens=5)
        for i, lang in enumerate(["fr", "de", "fr"])
    ]
    together = [t.text for t in multilingual.transcribe(rows)]
    assert sizes == [3]
    assert together == [multilingual.transcribe([row])[0].text for row in rows]


def test_translate_and_transcribe_are_separate_calls(multilingual, monkeypatch) -> None:
    sizes = count_generate_calls(multilingual, monkeypatch)
    rows = [
        SttRow(audio=clip(1.0, 0), language="fr", task="translate", max_new_tokens=4),
        SttRow(audio=clip(1.0, 1), language="fr", task="transcribe", max_new_tokens=4),
    ]
    multilingual.transcribe(rows)
    assert sizes == [1, 1]


@pytest.mark.parametrize("quantization", ["int8", "nf4", "fp4", "int4"])
def test_quantized_load_and_transcribe(model_store: Path, quantization: str) -> None:
    engine = WhisperEngine.load(
        LoadPlan.in_process(
            model_store / "whisper-tiny-random",
            resolve_placement(quantization, "auto", "cpu"),
            STT_SETTINGS,
        )
    )
    assert f"quantization={quantization}" in engine.describe() and "footprint=" in engine.describe()
    (result,) = engine.transcribe([SttRow(audio=clip(1.0, 0), max_new_tokens=4)])
    assert isinstance(result.text, str)


def test_long_form_batched_equals_alone_at_any_length(english) -> None:
    """Lengths off the 160-sample hop once made a long clip's last window differ in a batch."""
    rows = [
        SttRow(audio=np.concatenate([clip(45.0, 7), clip(0.01, 9)[:123]]), max_new_tokens=6),
        SttRow(audio=clip(35.0, 8)[: 35 * RATE - 77], max_new_tokens=6),
    ]
    together = english.transcribe(rows)
    alone = [english.transcribe([row])[0] for row in rows]
    assert [t.text for t in together] == [a.text for a in alone]
    assert [t.segments for t in together] == [a.segments for a in alone]


@pytest.mark.parametrize("temperature", [1e-40, 0.009])
def test_a_tiny_temperature_is_greedy(english, temperature: float) -> None:
    audio = clip(1.0, 3)
    assert english.check_temperature(temperature) == 0.0
    greedy = english.transcribe([SttRow(audio=audio, max_new_tokens=6)])
    tiny = SttRow(audio=audio, max_new_tokens=6, temperature=english.check_temperature(temperature))
    assert english.transcribe([tiny]) == greedy


def test_sampling_survives_infinite_scores(english) -> None:
    """A model that overflows to +inf for a token still samples it, instead of failing the call
    (torch.multinomial refuses such rows)."""
    token = 500  # an ordinary text token of the random checkpoint
    hook = english.model.proj_out.register_forward_hook(
        lambda module, args, output: output.index_fill(-1, torch.tensor([token]), float("inf"))
    )
    try:
        rows = [SttRow(audio=clip(1.0, i), max_new_tokens=3, temperature=0.8) for i in range(2)]
        for row in english.transcribe(rows):
            assert (
                row.text == english.processor.decode([token] * 3, skip_special_tokens=True).strip()
            )
    finally:
        hook.remove()


def test_a_batch_over_the_pass_budget_is_split_and_answers_the_same(english, monkeypatch) -> None:
    """max_pass_audio_seconds bounds rows x longest row per generate() call: 31, 40, 41 and
    42 s under a 90 s budget run as [31, 40] and [41, 42], each row as it would alone."""
    rows = [
        SttRow(audio=clip(s, i), max_new_tokens=4) for i, s in enumerate([41.0, 31.0, 42.0, 40.0])
    ]
    whole = english.transcribe(rows)
    monkeypatch.setattr(english, "max_pass_seconds", 90.0)
    sizes = count_generate_calls(english, monkeypatch)
    split = english.transcribe(rows)
    assert sizes == [2, 2]
    assert [t.text for t in split] == [t.text for t in whole]


@pytest.mark.parametrize("block_frames", [3000, 1000, 777])
def test_long_form_features_are_the_extractors_bit_for_bit(english, block_frames: int) -> None:
    """Made a block of frames at a time, the features of a long batch are exactly those of
    the feature extractor's spectrogram of the whole clips (rows padded to whole hops, the
    batch to its longest row): lengths off the hop, rows shorter than the longest by less
    and by more than one STFT frame, a silent row."""
    audio = [
        np.concatenate([clip(45.0, 7), clip(0.01, 9)[:123]]),
        clip(35.0, 8)[: 35 * RATE - 77],
        clip(45.0, 5)[: 45 * RATE + 123 - 150],
        np.zeros(31 * RATE + 5, dtype=np.float32),
    ]
    extractor = english.processor.feature_extractor
    hop = extractor.hop_length
    whole = extractor(
        [np.pad(a, (0, -a.shape[0] % hop)) for a in audio],
        sampling_rate=RATE,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    features, mask = long_form_features(audio, extractor, block_frames)
    assert features.dtype == whole.input_features.dtype and mask.dtype == whole.attention_mask.dtype
    assert torch.equal(features, whole.input_features)
    assert torch.equal(mask, whole.attention_mask)


def status_bytes(field: str) -> int:
    """A memory field of this process's /proc status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_long_form_features_hold_one_block_beside_the_features(english) -> None:
    """10 minutes of audio: the features are 19 MB; the extractor's whole-clip spectrogram
    cost +340 MB at its peak, a block at a time costs the features and one block's (+48 MB
    measured)."""
    audio = [np.zeros(600 * RATE, dtype=np.float32)]
    extractor = english.processor.feature_extractor
    long_form_features([audio[0][: 40 * RATE]], extractor)  # allocator and FFT plans warm
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    rss = status_bytes("VmRSS")
    features, _ = long_form_features(audio, extractor)
    rise = status_bytes("VmHWM") - rss
    size = features.numel() * features.element_size()
    assert rise < size + 64 * 1024 * 1024, f"+{rise >> 20} MB for {size >> 20} MB of features"
