"""The CTranslate2 reader and the Whisper converter, on small model.bin files written here.

The writer below follows the documented layout independently of the reader, and the tiny
Whisper it writes has different sizes everywhere (encoder and decoder layers, heads, FFN
widths), so a swapped dimension, a misplaced slice of a fused projection or a scalar read from
the wrong place fails a test. No network and no real weights are needed.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from tools.model_store.whisper_ct2 import (
    Ct2FormatError,
    convert_ct2_whisper,
    read_ct2_model,
    whisper_dims,
    whisper_state_dict,
    write_whisper_weights,
)

D = 8  # d_model
MELS = 4
ENC_LAYERS, DEC_LAYERS = 2, 1
ENC_HEADS, DEC_HEADS = 2, 4
ENC_FFN, DEC_FFN = 16, 12
ENC_POS, DEC_POS = 6, 5
CONTROL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
# 256 byte-level symbols, then the control tokens (256..264), then 1501 timestamps.
EOT, SOT, PREV, NO_TS = 256, 257, 262, 264
VOCAB = NO_TS + 1 + 1501
SPECIAL = {token: EOT + i for i, token in enumerate(CONTROL)}

CODES = {
    np.dtype("float32"): 0,
    np.dtype("int8"): 1,
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("float16"): 4,
}
BFLOAT16 = 5


def ct2_string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(
    path: Path,
    variables: dict[str, np.ndarray | tuple[np.ndarray, int]],
    aliases: dict[str, str],
    *,
    spec: str = "WhisperSpec",
    version: int = 6,
    revision: int = 3,
) -> Path:
    """Serialise variables as CTranslate2 does; a (uint16 array, 5) pair is bfloat16 data."""
    out = bytearray(struct.pack("<I", version) + ct2_string(spec))
    out += struct.pack("<II", revision, len(variables))
    for name, item in variables.items():
        value, code = item if isinstance(item, tuple) else (np.asarray(item), None)
        code = CODES[value.dtype] if code is None else code
        raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
        out += ct2_string(name) + struct.pack("<B", value.ndim)
        out += struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<BI", code, len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += ct2_string(alias) + ct2_string(target)
    path.write_bytes(bytes(out))
    return path


def tiny_whisper(seed: int = 0) -> dict[str, np.ndarray]:
    """A WhisperSpec-shaped variable set: weights float16, biases and norms float32."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float16)

    def b(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    v: dict[str, np.ndarray] = {
        "encoder/num_heads": np.array(ENC_HEADS, np.int16),
        "decoder/num_heads": np.array(DEC_HEADS, np.int16),
        "decoder/activation": np.array(3, np.int8),
        "decoder/pre_norm": np.array(1, np.int8),
        "decoder/alibi": np.array(0, np.int8),
        "decoder/scale_embeddings": np.array(0, np.int8),
        "decoder/start_from_zero_embedding": np.array(0, np.int8),
        "decoder/alignment_heads": np.array(1, np.int16),
        "decoder/alignment_layer": np.array(-1, np.int16),
        "encoder/conv1/weight": w(D, MELS, 3),
        "encoder/conv1/bias": b(D),
        "encoder/conv2/weight": w(D, D, 3),
        "encoder/conv2/bias": b(D),
        "encoder/position_encodings/encodings": b(ENC_POS, D),
        "encoder/layer_norm/gamma": b(D),
        "encoder/layer_norm/beta": b(D),
        "decoder/embeddings/weight": w(VOCAB, D),
        "decoder/position_encodings/encodings": b(DEC_POS, D),
        "decoder/layer_norm/gamma": b(D),
        "decoder/layer_norm/beta": b(D),
    }

    def block(prefix: str, ffn: int) -> None:
        v[f"{prefix}/self_attention/linear_0/weight"] = w(3 * D, D)
        v[f"{prefix}/self_attention/linear_0/bias"] = b(3 * D)
        v[f"{prefix}/self_attention/linear_1/weight"] = w(D, D)
        v[f"{prefix}/self_attention/linear_1/bias"] = b(D)
        v[f"{prefix}/self_attention/layer_norm/gamma"] = b(D)
        v[f"{prefix}/self_attention/layer_norm/beta"] = b(D)
        v[f"{prefix}/ffn/linear_0/weight"] = w(ffn, D)
        v[f"{prefix}/ffn/linear_0/bias"] = b(ffn)
        v[f"{prefix}/ffn/linear_1/weight"] = w(D, ffn)
        v[f"{prefix}/ffn/linear_1/bias"] = b(D)
        v[f"{prefix}/ffn/layer_norm/gamma"] = b(D)
        v[f"{prefix}/ffn/layer_norm/beta"] = b(D)

    for i in range(ENC_LAYERS):
        block(f"encoder/layer_{i}", ENC_FFN)
    for i in range(DEC_LAYERS):
        prefix = f"decoder/layer_{i}"
        block(prefix, DEC_FFN)
        v[f"{prefix}/attention/linear_0/weight"] = w(D, D)
        v[f"{prefix}/attention/linear_0/bias"] = b(D)
        v[f"{prefix}/attention/linear_1/weight"] = w(2 * D, D)
        v[f"{prefix}/attention/linear_1/bias"] = b(2 * D)
        v[f"{prefix}/attention/linear_2/weight"] = w(D, D)
        v[f"{prefix}/attention/linear_2/bias"] = b(D)
        v[f"{prefix}/attention/layer_norm/gamma"] = b(D)
        v[f"{prefix}/attention/layer_norm/beta"] = b(D)
    return v


TIED = {"decoder/projection/weight": "decoder/embeddings/weight"}
Tiny = tuple[Path, dict[str, np.ndarray]]


@pytest.fixture
def tiny(tmp_path: Path) -> Tiny:
    variables = tiny_whisper()
    return write_ct2(tmp_path / "model.bin", variables, TIED), variables


def f32(value: np.ndarray) -> np.ndarray:
    return value.astype(np.float32)


# ---------------------------------------------------------------------------------- reader


def test_reader_locates_every_variable_with_its_shape_and_dtype(tiny: Tiny) -> None:
    path, variables = tiny
    model = read_ct2_model(path)
    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
    assert set(model.variables) == set(variables)
    assert model.aliases == TIED
    for name, value in variables.items():
        var = model.variables[name]
        assert var.shape == value.shape, name
        assert var.dtype == value.dtype.name, name
        np.testing.assert_array_equal(model.array(name), value)
    assert model.scalar("encoder/num_heads") == ENC_HEADS
    assert model.scalar("decoder/num_heads") == DEC_HEADS
    assert model.scalar("decoder/alignment_layer") == -1
    # The alias reads the embeddings: CTranslate2's tied output projection.
    np.testing.assert_array_equal(
        model.array("decoder/projection/weight"), variables["decoder/embeddings/weight"]
    )


def test_reader_widens_bfloat16(tmp_path: Path) -> None:
    variables: dict = dict(tiny_whisper())
    exact = np.array([0.5, -1.25, 3.0, 1024.0, -0.0078125, 2.0, 7.5, 0.0], np.float32)
    variables["encoder/layer_norm/gamma"] = ((exact.view(np.uint32) >> 16).astype(np.uint16), 5)
    model = read_ct2_model(write_ct2(tmp_path / "model.bin", variables, TIED))
    assert model.variables["encoder/layer_norm/gamma"].dtype == "bfloat16"
    np.testing.assert_array_equal(model.array("encoder/layer_norm/gamma"), exact)
    state = whisper_state_dict(model)
    np.testing.assert_array_equal(state["model.encoder.layer_norm.weight"], exact)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(3, id="in-the-version"),
        pytest.param(12, id="in-the-spec-name"),
        pytest.param(200, id="in-a-header"),
        pytest.param(-50_000, id="in-the-embeddings"),
        pytest.param(-5, id="in-the-aliases"),
    ],
)
def test_a_truncated_file_is_refused_naming_the_file(tiny: Tiny, cut: int) -> None:
    path, _ = tiny
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data[: len(data) + cut])
    with pytest.raises(Ct2FormatError, match="truncated") as info:
        read_ct2_model(path)
    assert str(path) in str(info.value)


def test_a_foreign_spec_is_refused(tmp_path: Path) -> None:
    path = write_ct2(tmp_path / "model.bin", tiny_whisper(), TIED, spec="TransformerSpec")
    with pytest.raises(
        Ct2FormatError, match="model spec is 'TransformerSpec', expected 'WhisperSpec'"
    ) as info:
        read_ct2_model(path)
    assert str(path) in str(info.value)
    assert read_ct2_model(path, expected_spec=None).spec_name == "TransformerSpec"


def test_another_binary_version_is_refused(tmp_path: Path) -> None:
    path = write_ct2(tmp_path / "model.bin", tiny_whisper(), TIED, version=5)
    with pytest.raises(Ct2FormatError, match=r"binary version 5, expected one of \[6\]"):
        read_ct2_model(path)


def test_a_pytorch_zip_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(Ct2FormatError, match="zip file: a PyTorch pickle"):
        read_ct2_model(path)


def test_trailing_bytes_and_dangling_aliases_are_refused(tmp_path: Path) -> None:
    path = write_ct2(tmp_path / "model.bin", tiny_whisper(), TIED)
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(Ct2FormatError, match="4 unexpected bytes"):
        read_ct2_model(path)
    path = write_ct2(tmp_path / "model.bin", tiny_whisper(), {"decoder/projection/weight": "nope"})
    with pytest.raises(Ct2FormatError, match="points to 'nope'"):
        read_ct2_model(path)


# ------------------------------------------------------------------------------- converter


def test_dims_come_from_sizes_and_scalars(tiny: Tiny) -> None:
    dims = whisper_dims(read_ct2_model(tiny[0]))
    assert dims.d_model == D and dims.num_mel_bins == MELS and dims.vocab_size == VOCAB
    assert (dims.encoder_layers, dims.decoder_layers) == (ENC_LAYERS, DEC_LAYERS)
    assert (dims.encoder_attention_heads, dims.decoder_attention_heads) == (ENC_HEADS, DEC_HEADS)
    assert (dims.encoder_ffn_dim, dims.decoder_ffn_dim) == (ENC_FFN, DEC_FFN)
    assert (dims.max_source_positions, dims.max_target_positions) == (ENC_POS, DEC_POS)
    assert dims.tied_output and not dims.is_multilingual


def test_fused_projections_are_split_into_the_pieces(tiny: Tiny) -> None:
    path, v = tiny
    state = whisper_state_dict(read_ct2_model(path))
    for i in range(ENC_LAYERS):
        hf, ct2 = f"model.encoder.layers.{i}.self_attn", f"encoder/layer_{i}/self_attention"
        weight, bias = v[f"{ct2}/linear_0/weight"], v[f"{ct2}/linear_0/bias"]
        for j, part in enumerate("qkv"):
            np.testing.assert_array_equal(
                state[f"{hf}.{part}_proj.weight"], f32(weight[j * D : (j + 1) * D])
            )
        np.testing.assert_array_equal(state[f"{hf}.q_proj.bias"], bias[:D])
        np.testing.assert_array_equal(state[f"{hf}.v_proj.bias"], bias[2 * D :])
        assert f"{hf}.k_proj.bias" not in state  # Whisper's key projection has no bias
        np.testing.assert_array_equal(
            state[f"{hf}.out_proj.weight"], f32(v[f"{ct2}/linear_1/weight"])
        )
    hf, ct2 = "model.decoder.layers.0.encoder_attn", "decoder/layer_0/attention"
    np.testing.assert_array_equal(state[f"{hf}.q_proj.weight"], f32(v[f"{ct2}/linear_0/weight"]))
    np.testing.assert_array_equal(state[f"{hf}.q_proj.bias"], v[f"{ct2}/linear_0/bias"])
    kv_weight, kv_bias = v[f"{ct2}/linear_1/weight"], v[f"{ct2}/linear_1/bias"]
    np.testing.assert_array_equal(state[f"{hf}.k_proj.weight"], f32(kv_weight[:D]))
    np.testing.assert_array_equal(state[f"{hf}.v_proj.weight"], f32(kv_weight[D:]))
    np.testing.assert_array_equal(state[f"{hf}.v_proj.bias"], kv_bias[D:])
    assert f"{hf}.k_proj.bias" not in state
    np.testing.assert_array_equal(state[f"{hf}.out_proj.weight"], f32(v[f"{ct2}/linear_2/weight"]))
    # A few of the plain renames, and every tensor float32 by default.
    np.testing.assert_array_equal(
        state["model.encoder.conv1.weight"], f32(v["encoder/conv1/weight"])
    )
    np.testing.assert_array_equal(
        state["model.decoder.layers.0.fc1.weight"], f32(v["decoder/layer_0/ffn/linear_0/weight"])
    )
    np.testing.assert_array_equal(
        state["model.decoder.layers.0.final_layer_norm.bias"],
        v["decoder/layer_0/ffn/layer_norm/beta"],
    )
    assert {t.dtype for t in state.values()} == {np.dtype(np.float32)}
    assert "proj_out.weight" not in state  # tied: the config ties it to the embeddings


def test_the_checkpoint_loads_with_every_key_and_tied_output(tiny: Tiny, tmp_path: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    path, v = tiny
    out = tmp_path / "hf"
    write_whisper_weights(read_ct2_model(path), out, special=SPECIAL)
    model, info = WhisperForConditionalGeneration.from_pretrained(
        out, local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    config = model.config
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (
        ENC_HEADS,
        DEC_HEADS,
    )
    assert (config.encoder_ffn_dim, config.decoder_ffn_dim) == (ENC_FFN, DEC_FFN)
    assert config.num_mel_bins == MELS and config.vocab_size == VOCAB
    assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)
    torch.testing.assert_close(
        model.model.decoder.embed_tokens.weight,
        torch.from_numpy(f32(v["decoder/embeddings/weight"])),
    )
    # Loaded k_proj has no bias parameter at all, matching what was (not) written.
    assert model.model.encoder.layers[0].self_attn.k_proj.bias is None


def test_float16_output_keeps_the_source_precision(tiny: Tiny, tmp_path: Path) -> None:
    path, v = tiny
    out = tmp_path / "hf16"
    write_whisper_weights(read_ct2_model(path), out, dtype="float16", special=SPECIAL)
    state = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {np.dtype(np.float16)}
    np.testing.assert_array_equal(
        state["model.decoder.embed_tokens.weight"], v["decoder/embeddings/weight"]
    )
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["dtype"] == "float16"


def test_an_unmapped_variable_is_refused_not_dropped(tmp_path: Path) -> None:
    variables = tiny_whisper()
    variables["decoder/layer_0/ffn/linear_0/weight_scale"] = np.ones(DEC_FFN, np.float32)
    model = read_ct2_model(write_ct2(tmp_path / "model.bin", variables, TIED))
    with pytest.raises(
        Ct2FormatError, match=r"does not map: \['decoder/layer_0/ffn/linear_0/weight_scale'\]"
    ):
        whisper_state_dict(model)


def test_int8_quantized_weights_are_refused(tmp_path: Path) -> None:
    variables = tiny_whisper()
    variables["encoder/conv2/weight"] = np.ones((D, D, 3), np.int8)
    model = read_ct2_model(write_ct2(tmp_path / "model.bin", variables, TIED))
    with pytest.raises(Ct2FormatError, match="'encoder/conv2/weight' is int8"):
        whisper_state_dict(model)


def test_settings_transformers_cannot_express_are_refused(tmp_path: Path) -> None:
    variables = tiny_whisper()
    variables["decoder/activation"] = np.array(1, np.int8)  # GELU with tanh, not Whisper's
    model = read_ct2_model(write_ct2(tmp_path / "model.bin", variables, TIED))
    with pytest.raises(Ct2FormatError, match="decoder/activation is 1, expected 3"):
        whisper_state_dict(model)
    other = write_ct2(tmp_path / "rev.bin", tiny_whisper(), TIED, revision=2)
    with pytest.raises(Ct2FormatError, match="WhisperSpec revision 2"):
        whisper_state_dict(read_ct2_model(other))


def test_an_untied_projection_is_written_as_proj_out(tmp_path: Path) -> None:
    variables = tiny_whisper()
    projection = np.random.default_rng(1).standard_normal((VOCAB, D)).astype(np.float16)
    variables["decoder/projection/weight"] = projection
    model = read_ct2_model(write_ct2(tmp_path / "model.bin", variables, {}))
    assert not whisper_dims(model).tied_output
    np.testing.assert_array_equal(whisper_state_dict(model)["proj_out.weight"], f32(projection))


# ------------------------------------------------------------------ the whole checkpoint


def write_faster_whisper_dir(directory: Path) -> Path:
    """model.bin, config.json and a byte-level tokenizer.json shaped like faster-whisper's."""
    directory.mkdir()
    write_ct2(directory / "model.bin", tiny_whisper(), TIED)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)} | {"<|endoftext|>": EOT}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL])
    assert tokenizer.token_to_id("<|notimestamps|>") == NO_TS
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "alignment_heads": [[0, 1], [0, 3]],
        "lang_ids": [258],
        "suppress_ids": [1, 2, 7],
        "suppress_ids_begin": [220 % 256, EOT],
    }
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_the_whole_checkpoint_loads_with_auto_classes(tmp_path: Path) -> None:
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    out = convert_ct2_whisper(write_faster_whisper_dir(tmp_path / "ct2"), tmp_path / "hf")
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    }
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    model, info = AutoModelForSpeechSeq2Seq.from_pretrained(
        out, local_files_only=True, use_safetensors=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(processor).__name__ == "WhisperProcessor"
    assert processor.feature_extractor.feature_size == MELS

    # The generation config is used as written, not rebuilt from config.json.
    gen = model.generation_config
    assert gen.no_timestamps_token_id == NO_TS and gen.prev_sot_token_id == PREV
    assert gen.decoder_start_token_id == SOT and gen.eos_token_id == EOT
    assert gen.suppress_tokens == [1, 2, 7] and gen.begin_suppress_tokens == [220 % 256, EOT]
    assert gen.alignment_heads == [[0, 1], [0, 3]] and gen.is_multilingual is False

    # Timestamp tokens follow <|notimestamps|>, are not special, and decode away.
    tokenizer = processor.tokenizer
    assert len(tokenizer) == VOCAB
    assert tokenizer.all_special_ids[-1] == NO_TS
    assert tokenizer.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [NO_TS + 1, VOCAB - 1]
    hello = tokenizer("hello", add_special_tokens=False).input_ids
    assert tokenizer("hello").input_ids == [SOT, NO_TS, *hello, EOT]
    assert (
        tokenizer.decode([SOT, NO_TS + 1, *hello, NO_TS + 51, EOT], skip_special_tokens=True)
        == "hello"
    )

    # A random model still generates with timestamps: the config carries what that needs.
    features = torch.randn(1, MELS, 2 * ENC_POS)
    with torch.inference_mode():
        tokens = model.generate(features, return_timestamps=True, max_new_tokens=2)
    assert tokens.shape[0] == 1


def test_a_tokenizer_without_whisper_control_tokens_is_refused(tmp_path: Path) -> None:
    source = write_faster_whisper_dir(tmp_path / "ct2")
    data = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|startofprev|>"]
    (source / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        Ct2FormatError, match=r"lacks Whisper's control tokens \['<\|startofprev\|>'\]"
    ):
        convert_ct2_whisper(source, tmp_path / "hf")
