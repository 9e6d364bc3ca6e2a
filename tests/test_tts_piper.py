"""The real Piper voice (en_US-joe-medium) as the TTS engine and as the `tts` models' default.

tests/test_piper.py holds the voice against its own ONNX graph and loader; here it is held
against what serving relies on: its audio for a sentence is the same alone and inside a batch
(the VITS batching, built for "ResBlock1" decoders, holds for its "ResBlock2" one), the engine
computes what the voice's VitsModel computes for the row alone, the noise settings and the
speaking rate reach the voice, and a sentence its front end refuses, or an espeak-ng failure,
fails only its own request. The voice is built into the store by ./scripts/setup.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backends.tts.engine import TextLimits, Utterance, engine_class, load_engine
from backends.tts.piper import PiperEngine
from backends.tts.piper_model import HifiGanResidualBlock2, PiperFrontend
from backends.tts.settings import tts_params
from shared import phonemes
from shared.errors import ModelLoadError
from shared.loading import LoadPlan
from shared.phonemes import PhonemizerError
from shared.quantization import Placement
from tests.harness.runner import ModelHarness
from tests.speech import espeak_available
from tests.test_tts_model import TTS, TTS_STREAM, inputs, samples

pytestmark = [
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is not installed (./scripts/setup installs it)"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

VOICE = "piper-en_US-joe-medium"
CPU = Placement("cpu", "float32", "none")
#: Batched and alone run the same arithmetic in other shapes: equal to float rounding.
ATOL = 5e-4
TEXTS = ["Hello there, how are you?", "Fine.", "The sun is warm, the wind is light."]
#: Arabic-Indic digits: letters to the text checks, but espeak-ng's en-us says nothing for them.
NO_PHONEMES = "١٢٣"

TTS_SETTINGS = tts_params("piper-en_US-joe-medium")


@pytest.fixture(scope="module")
def engine(model_store: Path) -> PiperEngine:
    loaded = load_engine(LoadPlan.in_process(model_store / VOICE, CPU, TTS_SETTINGS))
    assert isinstance(loaded, PiperEngine)
    return loaded


def assert_same_audio(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert [x.shape for x in a] == [x.shape for x in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=ATOL, rtol=0)


def test_the_voice_is_served_by_the_piper_engine(engine: PiperEngine, model_store: Path) -> None:
    assert engine_class(model_store / VOICE) is PiperEngine
    assert isinstance(engine.front_end, PiperFrontend)
    assert (engine.voices, engine.sampling_rate) == (("0",), 22_050)
    # The voice's own settings (its .onnx.json): noise_scale 0.667, noise_w 0.8.
    assert (engine.noise_scale, engine.noise_scale_duration) == (0.667, 0.8)
    blocks = engine.model.decoder.resblocks
    assert len(blocks) == 9 and all(isinstance(b, HifiGanResidualBlock2) for b in blocks)
    assert "piper voice=en_US-joe-medium voices=1 rate=22050 Hz" in engine.describe()


def test_a_sentence_sounds_the_same_alone_and_inside_a_batch(engine: PiperEngine) -> None:
    rows = [engine.row(text, seed=10 + i) for i, text in enumerate(TEXTS)]
    together = engine.speak(rows)  # noise on: the voice's own settings
    alone = [engine.speak([row])[0] for row in rows]
    assert_same_audio(together, alone)
    assert len({x.shape[0] for x in together}) == len(rows), "rows have their own lengths"
    assert_same_audio(engine.speak(rows[::-1]), together[::-1])
    assert all(np.isfinite(x).all() and 0.01 < float(np.abs(x).max()) <= 1.5 for x in together)


def test_the_engine_computes_what_the_voice_computes_for_a_row_alone(engine: PiperEngine) -> None:
    """With torch's global seed set to the row's seed, VitsModel.forward draws the same noise.

    Left out: the last `margin_frames` frames, where the model's decoder sees its own zero
    padding and the engine's sees zero frames (the same for every row, alone or batched).
    """
    for index, (text, rate) in enumerate(zip(TEXTS, (1.0, 0.8, 1.6), strict=True)):
        encoded = engine.row(text).ids
        assert encoded is not None and len(encoded) == 1
        ids = encoded[0]
        utterance = Utterance(text, voice=0, speaking_rate=rate, seed=100 + index, ids=ids)
        (mine,) = engine.synthesize([utterance])
        torch.manual_seed(utterance.seed)
        with torch.inference_mode():
            out = engine.model(torch.tensor([ids]), speaking_rate=rate)
        assert int(out.sequence_lengths[0]) == mine.shape[0]
        keep = mine.shape[0] - engine.margin_frames * engine.hop
        np.testing.assert_allclose(mine[:keep], out.waveform[0, :keep].numpy(), atol=ATOL, rtol=0)


def test_the_vocoder_margin_covers_the_resblock2_decoder(engine: PiperEngine) -> None:
    """The kept samples of a row followed by `margin_frames` zero frames do not depend on what
    comes after; without the margin they do (so the check is not vacuous)."""
    decoder = engine.model.decoder
    generator = torch.Generator().manual_seed(0)
    frames, channels = 40, engine.model.config.flow_size
    row = torch.randn((1, channels, frames), generator=generator)
    tail = torch.randn((1, channels, 30), generator=generator)

    def kept(*parts: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            out = decoder(torch.cat(parts, dim=2))
        return out.reshape(-1)[: frames * engine.hop].numpy()

    zeros = torch.zeros((1, channels, engine.margin_frames))
    np.testing.assert_allclose(kept(row, zeros), kept(row, zeros, tail), atol=1e-5, rtol=0)
    assert not np.allclose(kept(row), kept(row, tail), atol=1e-3)


def test_noise_settings_and_speaking_rate_reach_the_voice(engine: PiperEngine) -> None:
    quiet = PiperEngine(
        engine._loaded, engine.front_end, TextLimits(), noise_scale=0.0, noise_scale_duration=0.0
    )
    text = TEXTS[2]
    # Noise off: the seed changes nothing. Noise on: another seed, other audio; the same seed,
    # the same samples.
    a, b = quiet.speak([quiet.row(text, seed=1), quiet.row(text, seed=2)])
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    first, other, again = engine.speak([engine.row(text, seed=s) for s in (1, 2, 1)])
    assert first.shape != other.shape or not np.allclose(first, other, atol=1e-3)
    np.testing.assert_allclose(first, again, atol=ATOL, rtol=0)
    assert first.shape != a.shape or not np.allclose(first, a, atol=1e-3)
    # Speaking rate is the inverse of Piper's length_scale; durations are rounded up to whole
    # frames per phoneme, so the change is less than proportional (this voice: 0.65 and 1.77).
    normal, fast, slow = (
        quiet.speak([quiet.row(text, speaking_rate=rate, seed=1)])[0].shape[0]
        for rate in (1.0, 2.0, 0.5)
    )
    assert 0.5 < fast / normal < 0.75 and 1.5 < slow / normal < 2.0


def test_a_broken_espeak_ng_fails_the_load(
    model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phonemes, "ESPEAK_PROGRAM", "espeak-ng-not-installed")
    with pytest.raises(ModelLoadError, match="cannot speak: espeak-ng-not-installed is not"):
        load_engine(LoadPlan.in_process(model_store / VOICE, CPU, TTS_SETTINGS))


# --- the tts models: the voice by default, its settings, per-request front-end failures -------


@pytest.fixture
def store_env(model_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODEL_STORE", str(model_store))
    return model_store


def test_the_voice_is_the_default_of_both_models(store_env: Path) -> None:
    for model_dir in (TTS, TTS_STREAM):
        with ModelHarness(model_dir) as default:
            loaded = [m for _, m in default.logs if "loaded piper" in m]
            assert loaded and "voice=en_US-joe-medium voices=1 rate=22050 Hz" in loaded[0]
            assert "noise_scale=0.667 noise_w=0.8" in loaded[0]
            results = default.infer(inputs("Hi there.", seed=1, format="pcm_f32"))
            result = results[-1] if isinstance(results, list) else results
            audio, rate = samples(result)
            assert rate == 22_050 and 0.3 < audio.shape[0] / rate < 3.0


def test_noise_settings_come_from_config_and_environment(
    store_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelHarness(TTS, parameters={"noise_scale": "0", "noise_w": "0"}) as quiet:
        assert any("noise_scale=0 noise_w=0" in m for _, m in quiet.logs)
        one, two = (
            samples(quiet.infer(inputs(TEXTS[0], seed=seed, format="pcm_f32")))[0]
            for seed in (1, 2)
        )
        np.testing.assert_allclose(one, two, atol=ATOL, rtol=0)  # no noise: seeds do nothing
    monkeypatch.setenv("TTS_NOISE_W", "0.3")
    with ModelHarness(TTS, parameters={"noise_scale": "0.5"}) as tuned:
        assert any("noise_scale=0.5 noise_w=0.3" in m for _, m in tuned.logs)
    for bad in ("nan", "3"):
        with pytest.raises(ModelLoadError, match="setting 'noise_w' from environment variable"):
            monkeypatch.setenv("TTS_NOISE_W", bad)
            ModelHarness(TTS).load()


def test_a_front_end_failure_fails_only_its_own_request(
    store_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text that gives no phoneme (INVALID_ARG) and an espeak-ng failure (INTERNAL) happen
    while each request is parsed; the rest of the batch is served in one forward pass."""
    with ModelHarness(TTS) as tts:
        engine = tts.model.engine
        phonemize = engine.front_end.phonemes

        def failing_on_crash(texts: list[str]) -> list[str]:
            if any("crash" in text for text in texts):
                raise PhonemizerError("espeak-ng -v en-us failed (exit 1): simulated")
            return phonemize(texts)

        monkeypatch.setattr(engine.front_end, "phonemes", failing_on_crash)
        calls: list[int] = []
        forward = engine._forward
        monkeypatch.setattr(
            engine, "_forward", lambda ids, u: (calls.append(len(ids)), forward(ids, u))[1]
        )
        good = inputs("A good text.", seed=1, format="pcm_f32")
        requests = [
            good,
            inputs(NO_PHONEMES, seed=2, format="pcm_f32"),
            inputs("Please crash now.", seed=3, format="pcm_f32"),
            good,
        ]
        results = tts.execute([tts.request(r) for r in requests])
        assert calls == [2]
        assert results[1].code == "INVALID_ARG" and results[1].http_status == 400
        assert (results[1].message or "").startswith("input 'text' sentence 0 (")
        assert "gives no phoneme this voice knows" in (results[1].message or "")
        assert results[2].code == "INTERNAL" and "PhonemizerError" in (results[2].message or "")
        assert "simulated" not in (results[2].message or "")  # details go to the server log
        np.testing.assert_array_equal(samples(results[0])[0], samples(results[3])[0])

    with ModelHarness(TTS_STREAM) as stream:
        first, bad = stream.execute(
            [
                stream.request(inputs("One. Two.", seed=1)),
                stream.request(inputs(NO_PHONEMES, seed=2)),
            ]
        )
        assert [r.final for r in first] == [False, True] and all(r.error is None for r in first)
        assert len(bad) == 1 and bad[0].final and bad[0].code == "INVALID_ARG"


def test_the_placement_reaches_the_voice_int8(model_store: Path, engine: PiperEngine) -> None:
    """bitsandbytes int8 (linear layers: the text encoder's) through shared.quantization."""
    from bitsandbytes.nn import Linear8bitLt

    int8 = load_engine(
        LoadPlan.in_process(model_store / VOICE, Placement("cpu", "float32", "int8"), TTS_SETTINGS)
    )
    assert "quantization=int8" in int8.describe()
    layers = [m for m in int8.model.text_encoder.modules() if isinstance(m, Linear8bitLt)]
    assert layers, "the text encoder's linear layers are quantized"
    row = int8.row(TEXTS[2], seed=3)
    (quantized,) = int8.speak([row])
    (full,) = engine.speak([row])
    assert np.isfinite(quantized).all() and abs(quantized.size - full.size) <= 0.1 * full.size


def test_bfloat16_voice_speaks_every_sentence(model_store: Path, engine: PiperEngine) -> None:
    """bfloat16 (about twice float32's speed on a CPU with avx512_bf16) keeps the duration
    predictor in float32: in bfloat16 its spline raised ValueError on this sentence, and frame
    counts above 256 are not exact integers in bfloat16."""
    half = load_engine(
        LoadPlan.in_process(model_store / VOICE, Placement("cpu", "bfloat16", "none"), TTS_SETTINGS)
    )
    assert next(half.model.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(half.model.duration_predictor.parameters()).dtype == torch.float32
    text = "We need more water and some bread for the trip."
    rows = [half.row(text, seed=seed) for seed in range(4)]
    spoken = half.speak(rows)
    (full,) = engine.speak([engine.row(text, seed=0)])
    for audio in spoken:
        assert np.isfinite(audio).all() and abs(audio.size - full.size) <= 0.25 * full.size


def count_passes(engine: PiperEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of every forward pass the engine runs from now on."""
    made: list[int] = []
    forward = engine._forward

    def spy(ids: list[list[int]], batch: list[Utterance]) -> list[np.ndarray]:
        made.append(len(ids))
        return forward(ids, batch)

    monkeypatch.setattr(engine, "_forward", spy)
    return made


def test_a_sentence_over_the_pass_budget_fails_alone_before_synthesis(
    store_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digits are read as long numbers: 96 characters at half speed are 78 s of audio in one
    padded pass (+1.6 GB when it ran). The voice's own duration predictor says so before any
    audio is made, and only that request fails, on `tts` and `tts_stream` alike."""
    numbers = "1234567 " * 12
    for model in (TTS, TTS_STREAM):
        with ModelHarness(model) as tts:
            made = count_passes(tts.model.engine, monkeypatch)
            good, bad = tts.execute(
                [
                    tts.request(inputs("A good text.", seed=1, speaking_rate=1.0)),
                    tts.request(inputs(numbers, seed=1, speaking_rate=0.5)),
                ]
            )
            good, bad = (r[-1] if isinstance(r, list) else r for r in (good, bad))
            assert good.error is None and made == [1]
            assert bad.code == "INVALID_ARG"
            assert bad.message.startswith("input 'text' sentence 0 would be 77.")
            assert "one forward pass holds at most 60 s (max_pass_audio_seconds)" in bad.message
