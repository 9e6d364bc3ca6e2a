"""Small random-weight Whisper checkpoints of the real architectures, built without a hub.

They exercise the exact loading and serving code (config, safetensors, tokenizer, feature
extractor, generation config with Whisper's special-token layout) in tests that must stay fast;
a user's real checkpoint goes through the same `from_pretrained` path. Their transcripts are
babble. Two shapes cover the differences of the family that the serving code sees:

* `tiny.en`: English-only, 80 mel bins, no language or task tokens in the prompt;
* `large-v3-turbo`: multilingual (100 languages, `<|yue|>` included), 128 mel bins, a deep
  encoder and a shallow decoder, `language=` (one or one per row) and `task="translate"`.

Token ids follow the real layout rule, only with a small byte-level BPE in front:
`<|endoftext|>` right after the BPE vocabulary, then `<|startoftranscript|>`, the languages,
`<|translate|>`, `<|transcribe|>`, `<|startoflm|>`, `<|startofprev|>`, `<|nocaptions|>`,
`<|notimestamps|>`, and the 1501 timestamps `<|0.00|>` ... `<|30.00|>`. transformers derives
ids from that order (the first timestamp is `no_timestamps_token_id + 1` and the last special
id + 1; a language is `<|startoftranscript|>` + 1 + its index in `LANGUAGES`).

Random weights alone do not behave like a Whisper: the 1501 timestamp tokens outnumber the
text tokens, so the argmax is mostly a timestamp even without `return_timestamps`, and
transformers then decodes a 1 s clip in several passes (it seeks to the last timestamp pair
and decodes again, up to `max_new_tokens` more each time); and `<|endoftext|>`, Whisper's pad
token, gets the zero row nn.Embedding gives a padding index, so it is never chosen. A trained model gives timestamps,
special tokens and `<|endoftext|>` an output bias; `_shape_output_biases` gives the random one
the same kind of bias, so that greedy decoding without timestamps never emits a timestamp,
with timestamps emits some (segments and long-form seeking are exercised), rows end at
different lengths, and the babble has no control characters. Everything is a function of
the seed: same seed, same bytes.
"""

from __future__ import annotations

import json
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.model_store import manifest
from tools.model_store.wheels import progress, remove_stale_temp_dirs

if TYPE_CHECKING:
    from transformers import GenerationConfig, WhisperConfig, WhisperTokenizer

#: The marker written last into a finished checkpoint (a JSON manifest, see `_manifest`).
MARKER = manifest.MARKER
#: Bumped whenever the files written here change, so stores built by older code are redone.
REVISION = 6

# Text the byte-level BPE is trained on: any English will do, the merges only need to exist.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. My name is John and I live in London.
Please call Stella and ask her to bring these things with her from the store: six spoons of
fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.
Open the door and turn on the lights. Thank you very much for your help. The weather today
is sunny and warm, with a light wind from the west and clouds later in the evening.
A large language model can answer questions about the weather, the news and the time.
Speech recognition turns audio into text; text to speech turns text back into audio.
We will meet at the library on Monday afternoon, and then we can go for a walk in the park.
Good morning, this is a test of the speech recognition system. How are you doing today?
"""
_BPE_VOCAB_SIZE = 640

#: How output biases are made (see `_shape_output_biases`): the decoder's final layer norm holds
#: hidden channel `_BIAS_CHANNEL` at `_BIAS_LEVEL`, so `_BIAS_LEVEL` times that column of the
#: tied token embedding is added to every logit.
_BIAS_CHANNEL = 0
_BIAS_LEVEL = 4.0
#: The biases, in logits (text tokens get 0). With init_std 0.3 over 64 channels, text logits
#: spread by about 2.4 and the best text token scores about 7 (5.9 to 8.5), so: timestamps (at
#: most about 0.5) never win greedily, but their summed probability (log-sum-exp about 6) beats
#: the best text token now and then, which is when WhisperTimeStampLogitsProcessor forces one;
#: <|endoftext|> (about 5.5) wins at a step now and then, ending some rows early.
_TIMESTAMP_BIAS = -1.5
_TIMESTAMP_SPREAD = 0.25  # the timestamps' random part, relative to text tokens
_EOT_BIAS = 5.5
_EOT_SPREAD = 0.25  # <|endoftext|>'s random part, relative to text tokens
_SPECIAL_BIAS = -8.0  # never chosen; language detection only compares languages with each other
#: Wider than transformers' 0.02, so that different audio gives clearly different babble.
_INIT_STD = 0.3


@dataclass(frozen=True)
class Variant:
    """The shape of one random checkpoint and the real checkpoint it stands in for."""

    store_name: str  # the directory name suggested for a model store
    mimics: str  # the real checkpoint whose layout (not size) this copies
    multilingual: bool
    num_mel_bins: int
    d_model: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 4
    ffn: int = 256


VARIANTS: dict[str, Variant] = {
    # The real tiny.en: d_model 384, 4 + 4 layers, 6 heads, vocabulary 51864.
    "tiny.en": Variant(
        store_name="whisper-tiny-random",
        mimics="openai/whisper-tiny.en",
        multilingual=False,
        num_mel_bins=80,
    ),
    # The real large-v3-turbo: d_model 1280, 32 encoder + 4 decoder layers, vocabulary 51866.
    "large-v3-turbo": Variant(
        store_name="whisper-large-v3-turbo-random",
        mimics="openai/whisper-large-v3-turbo",
        multilingual=True,
        num_mel_bins=128,
        encoder_layers=4,
        decoder_layers=2,
    ),
}


def language_codes(multilingual: bool) -> list[str]:
    """Whisper's language codes in token order: 100 since large-v3, 99 (no yue) before."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    codes = list(LANGUAGES)  # insertion order is the token order; "yue" is last
    return codes if multilingual else [c for c in codes if c != "yue"]


def special_tokens(multilingual: bool) -> list[str]:
    """Whisper's special tokens in id order, `<|endoftext|>` first, `<|notimestamps|>` last."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in language_codes(multilingual)),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]


def timestamp_tokens() -> list[str]:
    """`<|0.00|>` ... `<|30.00|>` in 0.02 s steps: 1501 tokens, right after the specials."""
    return [f"<|{i * 0.02:.2f}|>" for i in range(1501)]


def build_tokenizer(multilingual: bool) -> WhisperTokenizer:
    """A WhisperTokenizer (tokenizers-backed, the "fast" one) over a BPE trained here.

    Specials are special added tokens; timestamps are added tokens that are *not* special,
    as on the Hub: transformers takes the last special id + 1 as the first timestamp.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, WhisperTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.splitlines(), trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(state["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    vocab["<|endoftext|>"] = len(vocab)  # in the BPE vocabulary, as in the real one
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False)
                for t in special_tokens(multilingual)[1:]
            ]
        }
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in timestamp_tokens()]
    )
    # The constructor built the post-processor (<|startoftranscript|> <|notimestamps|> $A
    # <|endoftext|>) before these tokens existed; rebuild it so tokenizer.json is right too.
    tokenizer.set_prefix_tokens()
    return tokenizer


def non_speech_token_ids(tokenizer: WhisperTokenizer) -> list[int]:
    """Tokens of symbols that are not speech, by the rule OpenAI's decoder uses.

    The real checkpoints' `suppress_tokens` are these plus a few special tokens. Where this
    small BPE splits off a leading space that the real one merges (" -", " ♪"), the plain space
    is not suppressed with it.
    """
    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += [
        "<<",
        ">>",
        "<<<",
        ">>>",
        "--",
        "---",
        "-(",
        "-[",
        "('",
        '("',
        "((",
        "))",
        "(((",
        ")))",
        "[[",
        "]]",
        "{{",
        "}}",
        "♪♪",
        "♪♪♪",
    ]
    miscellaneous = set("♩♪♫♬♭♮♯")

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    result = {ids[0] for ids in (encode(" -"), encode(" '")) if len(ids) == 1}
    for symbol in symbols + sorted(miscellaneous):
        for ids in (encode(symbol), encode(" " + symbol)):
            if len(ids) == 1 or symbol in miscellaneous:
                result.add(ids[0])
    (space,) = encode(" ")
    return sorted(result - {space})


def _model_config(variant: Variant, tokenizer: WhisperTokenizer) -> WhisperConfig:
    from transformers import WhisperConfig

    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    return WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=variant.num_mel_bins,
        d_model=variant.d_model,
        encoder_layers=variant.encoder_layers,
        decoder_layers=variant.decoder_layers,
        encoder_attention_heads=variant.heads,
        decoder_attention_heads=variant.heads,
        encoder_ffn_dim=variant.ffn,
        decoder_ffn_dim=variant.ffn,
        # 1500 encoder positions are what makes a 30 s window of 3000 frames; not shrinkable.
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        suppress_tokens=_suppress_tokens(tokenizer),
        begin_suppress_tokens=_begin_suppress_tokens(tokenizer),
        init_std=_INIT_STD,
    )


def _suppress_tokens(tokenizer: WhisperTokenizer) -> list[int]:
    """As on the Hub: non-speech symbols plus the specials OpenAI's decoder suppresses."""
    ids = tokenizer.convert_tokens_to_ids
    specials = ["<|startoftranscript|>", "<|translate|>", "<|transcribe|>"]
    specials += ["<|startoflm|>", "<|startofprev|>", "<|nocaptions|>"]
    return sorted({*non_speech_token_ids(tokenizer), *(ids(t) for t in specials)})


def _begin_suppress_tokens(tokenizer: WhisperTokenizer) -> list[int]:
    """A transcript never starts with a bare space or ends before its first token."""
    (space,) = tokenizer.encode(" ", add_special_tokens=False)
    return [space, tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def _generation_config(
    variant: Variant, tokenizer: WhisperTokenizer, config: WhisperConfig
) -> GenerationConfig:
    """Whisper's generation settings with the fields the Hub's generation_config.json has.

    Built directly, not with `from_model_config`: a config marked `_from_model_config` is
    rebuilt from config.json on load, which drops `no_timestamps_token_id`, and then
    `return_timestamps=True` fails with "the generation config is not properly set".
    """
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    settings: dict[str, Any] = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "suppress_tokens": list(config.suppress_tokens),
        "begin_suppress_tokens": list(config.begin_suppress_tokens),
        "no_timestamps_token_id": ids("<|notimestamps|>"),
        "prev_sot_token_id": ids("<|startofprev|>"),
        "max_initial_timestamp_index": 50,
        "max_length": config.max_target_positions,
        "is_multilingual": variant.multilingual,
        "return_timestamps": False,
        # Token-level timestamps need some; the real ones are chosen heads of the last layers.
        "alignment_heads": [[variant.decoder_layers - 1, h] for h in range(variant.heads)],
    }
    if variant.multilingual:
        # Only multilingual checkpoints have these: with `lang_to_id` present, generate()
        # detects a language when none is given, even for an English-only model.
        settings["lang_to_id"] = {
            f"<|{c}|>": ids(f"<|{c}|>") for c in language_codes(multilingual=True)
        }
        settings["task_to_id"] = {
            "translate": ids("<|translate|>"),
            "transcribe": ids("<|transcribe|>"),
        }
        # As large-v3(-turbo) on the Hub: without `task`/`language`, detect the language and
        # transcribe (prompt <|startoftranscript|> <|xx|> <|transcribe|> <|notimestamps|>).
        settings["forced_decoder_ids"] = [[1, None], [2, ids("<|transcribe|>")]]
    generation = GenerationConfig(**settings)
    generation._from_model_config = False
    return generation


def _shape_output_biases(model: Any, tokenizer: WhisperTokenizer) -> None:
    """Give the random decoder the output biases a trained Whisper has (see the module doc).

    Whisper's output projection is tied to its token embedding and has no bias, so the bias is
    made with the decoder's final layer norm: channel `_BIAS_CHANNEL` is held at `_BIAS_LEVEL`
    (weight 0, bias `_BIAS_LEVEL`), and that column of the embedding carries each token's bias.
    The same column is part of the decoder's input embedding, which is harmless.
    """
    import torch

    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    first_timestamp = ids("<|notimestamps|>") + 1
    embedding = model.get_decoder().embed_tokens.weight
    norm = model.get_decoder().layer_norm
    with torch.no_grad():
        norm.weight[_BIAS_CHANNEL] = 0.0
        norm.bias[_BIAS_CHANNEL] = _BIAS_LEVEL
        # nn.Embedding zeroes the padding row (<|endoftext|>, Whisper's pad): a constant logit
        # of 0 that greedy decoding never picks. Give it a random row like every other token.
        embedding[eot] = torch.randn_like(embedding[eot]) * _INIT_STD * _EOT_SPREAD
        embedding[first_timestamp:] *= _TIMESTAMP_SPREAD
        bias = torch.zeros(embedding.shape[0])
        bias[_control_character_ids(tokenizer)] = _SPECIAL_BIAS
        bias[eot] = _EOT_BIAS
        bias[eot + 1 : first_timestamp] = _SPECIAL_BIAS
        bias[first_timestamp:] = _TIMESTAMP_BIAS
        embedding[:, _BIAS_CHANNEL] = bias / _BIAS_LEVEL


def _control_character_ids(tokenizer: WhisperTokenizer) -> list[int]:
    """BPE tokens that decode to control characters, which no trained Whisper writes."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return [
        i
        for i in range(eot)
        if any(unicodedata.category(ch) == "Cc" for ch in tokenizer.decode([i]))
    ]


def _write(dest: Path, variant: Variant, seed: int) -> None:
    """Write every file `from_pretrained` reads into `dest` (created)."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    tokenizer = build_tokenizer(variant.multilingual)
    config = _model_config(variant, tokenizer)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config).eval()
        _shape_output_biases(model, tokenizer)
    model.generation_config = _generation_config(variant, tokenizer, config)
    model.save_pretrained(dest)  # config.json, model.safetensors, generation_config.json
    tokenizer.save_pretrained(dest)  # tokenizer.json, tokenizer_config.json
    extractor = WhisperFeatureExtractor(feature_size=variant.num_mel_bins)
    extractor.processor_class = "WhisperProcessor"  # so that AutoProcessor builds the pair
    extractor.save_pretrained(dest)  # preprocessor_config.json


def _manifest(variant: str, seed: int) -> dict[str, Any]:
    return {"builder": "whisper_random", "revision": REVISION, "variant": variant, "seed": seed}


def is_complete(dest: Path, variant: str, seed: int = 0) -> bool:
    """True when `dest` holds a finished build of `variant`/`seed` by this revision.

    The manifest lists every file's size, so a truncated or missing file counts as unfinished.
    """
    return manifest.is_complete(Path(dest), _manifest(variant, seed))


def build_random_whisper(dest: Path, variant: str, seed: int = 0) -> Path:
    """Write a random-weight Whisper of `variant` shape to `dest`; a no-op when complete.

    The checkpoint is written into a temporary directory next to `dest` (same file system)
    and renamed into place when finished, the manifest last
    (`tools.model_store.manifest.publish`), so a reader never sees half of one; a `dest`
    without a matching manifest (half-written, other seed, older revision) is replaced.
    Returns `dest`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown Whisper variant {variant!r}; known: {sorted(VARIANTS)}")
    dest = Path(dest)
    if is_complete(dest, variant, seed):
        progress(f"{dest} is complete; skipping")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(dest.parent, f".{dest.name}-")
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        work = Path(tmp) / "checkpoint"
        _write(work, VARIANTS[variant], seed)
        manifest.publish(work, dest, _manifest(variant, seed), Path(tmp))
    size_mb = sum(p.stat().st_size for p in manifest.checkpoint_files(dest)) / 1e6
    progress(f"built random-weight Whisper ({variant}, seed {seed}) in {dest} ({size_mb:.1f} MB)")
    return dest
