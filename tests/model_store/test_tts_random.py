"""Random-weight TTS checkpoints: complete, loadable through the Auto classes, shaped like the
real ones, and reproducible.

Their speech is noise, so the tests assert what serving relies on: the files and token ids of
the real layouts, durations in the range of speech, an audible vocoder, same seed same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForTextToSpectrogram,
    AutoModelForTextToWaveform,
    AutoTokenizer,
    SpeechT5HifiGan,
    VitsConfig,
)

from tools.model_store.manifest import MARKER
from tools.model_store.tts_random import VARIANTS, build_random_tts, is_complete

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VITS_FILES = {
    "config.json",
    "model.safetensors",
    "vocab.json",
    "added_tokens.json",
    "tokenizer_config.json",
    MARKER,
}
SPEECHT5_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "spm_char.model",
    "tokenizer_config.json",
    "voices.safetensors",
    "vocoder/config.json",
    "vocoder/model.safetensors",
    MARKER,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("random-tts")
    return {
        v: build_random_tts(root / VARIANTS[v].store_name, v)
        for v in ("vits-tiny", "speecht5-tiny")
    }


def files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def load_model(cls: type, path: Path) -> torch.nn.Module:
    model, info = cls.from_pretrained(
        path, local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    return model.eval()


def test_vits_loads_through_auto_classes_with_its_character_tokenizer(
    built: dict[str, Path],
) -> None:
    path = built["vits-tiny"]
    assert files(path) == VITS_FILES
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in path.rglob("*"))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = load_model(AutoModelForTextToWaveform, path)
    assert type(tokenizer).__name__ == "VitsTokenizer" and type(model).__name__ == "VitsModel"
    assert model.config.vocab_size == len(tokenizer)
    assert (model.config.num_speakers, model.config.sampling_rate) == (3, 16_000)
    # Characters with the blank (id 0) between and around them; upper case is lower-cased and
    # punctuation dropped, as MMS-TTS's tokenizer does.
    ids = tokenizer("Ab, c").input_ids
    assert ids[0::2] == [0] * 5 and ids[1::2] == tokenizer("ab c").input_ids[1::2]
    assert tokenizer.decode(ids) == "ab c"


def test_vits_durations_are_in_the_range_of_speech(built: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built["vits-tiny"], local_files_only=True)
    model = load_model(AutoModelForTextToWaveform, built["vits-tiny"])
    inputs = tokenizer("open the door and turn on the lights please", return_tensors="pt")
    torch.manual_seed(0)
    with torch.inference_mode():
        out = model(**inputs, speaker_id=1)
    frames = int(out.sequence_lengths[0]) / 256
    assert 1.5 < frames / inputs.input_ids.shape[1] < 4.0  # calibrated to 2.5 frames a token
    assert 0.05 < float(out.waveform.std()) < 1.0


def test_speecht5_has_its_tokenizer_vocoder_and_voices(built: dict[str, Path]) -> None:
    path = built["speecht5-tiny"]
    assert files(path) == SPEECHT5_FILES
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = load_model(AutoModelForTextToSpectrogram, path)
    vocoder = load_model(SpeechT5HifiGan, path / "vocoder")
    assert type(tokenizer).__name__ == "SpeechT5Tokenizer"
    assert type(model).__name__ == "SpeechT5ForTextToSpeech"
    # The real layout: <s> 0, <pad> 1, </s> 2, <unk> 3; one piece per character; </s> appended.
    assert [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.unk_token_id == 3 and model.config.vocab_size == len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("Hi, 42!").input_ids)
    assert pieces == ["▁", "H", "i", ",", "▁", "4", "2", "!", "</s>"]
    assert tokenizer("é").input_ids[-2] == tokenizer.unk_token_id
    with safe_open(str(path / "voices.safetensors"), "pt") as voices:
        assert sorted(voices.keys()) == ["speaker-a", "speaker-b", "speaker-c"]
        assert all(voices.get_tensor(k).shape == (512,) for k in voices.keys())  # noqa: SIM118
    assert model.config.speaker_embedding_dim == 512
    assert vocoder.config.model_in_dim == model.config.num_mel_bins == 80
    mel = torch.randn((1, 50, 80), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        waveform = vocoder(mel)
    assert waveform.shape == (1, 50 * 256) and float(waveform.std()) > 0.05  # audible


def test_speecht5_never_stops_by_its_stop_token(built: dict[str, Path]) -> None:
    path = built["speecht5-tiny"]
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = load_model(AutoModelForTextToSpectrogram, path)
    ids = tokenizer("Open the door.", return_tensors="pt").input_ids
    with safe_open(str(path / "voices.safetensors"), "pt") as voices:
        speaker = voices.get_tensor("speaker-a")[None]
    torch.manual_seed(0)
    with torch.inference_mode():
        spectrogram = model.generate_speech(ids, speaker)
    # generate_speech's limit: maxlenratio 20 steps over the reduction factor 2, per token.
    assert spectrogram.shape == (int(ids.shape[1] * 20 / 2) * 2, 80)


def test_the_store_entry_is_mms_tts_sized(model_store: Path) -> None:
    path = model_store / "mms-tts-eng-random"
    assert is_complete(path, "mms-tts-eng")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    reference = VitsConfig()  # its defaults are facebook/mms-tts-eng's shape
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "ffn_dim",
        "flow_size",
        "upsample_initial_channel",
        "upsample_rates",
        "upsample_kernel_sizes",
        "resblock_kernel_sizes",
        "resblock_dilation_sizes",
        "sampling_rate",
        "num_speakers",
    ):
        assert config[key] == json.loads(json.dumps(getattr(reference, key))), key
    with safe_open(str(path / "model.safetensors"), "pt") as weights:
        parameters = sum(np.prod(weights.get_slice(k).get_shape()) for k in weights.keys())  # noqa: SIM118
    assert 36e6 < parameters < 37e6


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a = build_random_tts(tmp_path / "a", "speecht5-tiny", seed=3)
    b = build_random_tts(tmp_path / "b", "speecht5-tiny", seed=3)
    c = build_random_tts(tmp_path / "c", "speecht5-tiny", seed=4)
    for name in SPEECHT5_FILES - {MARKER}:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "spm_char.model").read_bytes() == (c / "spm_char.model").read_bytes()


def test_building_twice_is_a_no_op_and_a_broken_build_is_redone(tmp_path: Path) -> None:
    dest = build_random_tts(tmp_path / "t", "speecht5-tiny")
    vocoder = dest / "vocoder" / "model.safetensors"
    stamp = vocoder.stat().st_mtime_ns
    assert build_random_tts(dest, "speecht5-tiny") == dest
    assert vocoder.stat().st_mtime_ns == stamp
    vocoder.write_bytes(b"half")  # a truncated file in the subdirectory: rebuilt
    build_random_tts(dest, "speecht5-tiny")
    assert vocoder.stat().st_size > 4 and is_complete(dest, "speecht5-tiny")
    build_random_tts(dest, "speecht5-tiny", seed=1)  # another seed replaces it
    manifest = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    assert manifest["seed"] == 1 and "vocoder/model.safetensors" in manifest["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temporary dirs left
    with pytest.raises(ValueError, match="unknown TTS variant"):
        build_random_tts(tmp_path / "x", "tacotron")
    assert not (tmp_path / "x").exists()
