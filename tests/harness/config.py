"""A model's configuration as tritonserver 2.51 completes it and hands it to `initialize()`.

`config.pbtxt` is parsed with Triton's own protobuf schema (tritonclient's model_config_pb2 and
google.protobuf.text_format), then completed the way the server does (core
model_config_utils.cc: AutoCompleteBackendFields, NormalizeModelConfig, NormalizeInstanceGroup)
and written as Triton writes it: every field with its default, in declaration order, int64 as
numbers, compact. The contract tests compare this text with the server's
/v2/models/<model>/config: byte for byte but for the order of map entries (`parameters`), which
the server writes in an order that changes from one start to the next (protobuf's map order);
the harness writes them sorted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig
KIND_NAMES = {"KIND_CPU": "CPU", "KIND_GPU": "GPU", "KIND_MODEL": "MODEL", "KIND_AUTO": "AUTO"}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
_FLOATS = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
SEQUENCE_IDLE_DEFAULT_MICROSECONDS = 1_000_000


def read(model_dir: Path) -> ModelConfig:
    """config.pbtxt through Triton's schema: an unknown field is an error, as in the server."""
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    return text_format.Parse(text, ModelConfig())


def version_dirs(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def served_versions(config: ModelConfig, model_dir: Path) -> list[int]:
    """The versions the server loads under the config's version_policy (default: latest 1)."""
    versions = version_dirs(model_dir)
    policy = config.version_policy
    if policy.HasField("all"):
        return versions
    if policy.HasField("specific"):
        return [v for v in versions if v in set(policy.specific.versions)]
    latest = policy.latest.num_versions if policy.HasField("latest") else 1
    return versions[-latest:]


def complete(
    config: ModelConfig,
    model_dir: Path,
    *,
    parameters: Mapping[str, str] | None = None,
    instance_kind: str | None = None,
    device_id: int = 0,
) -> ModelConfig:
    """The server's completion of a parsed config, plus the test's overrides.

    `parameters` override or add `parameters { key ... string_value }` entries;
    `instance_kind` ("CPU", "GPU", "MODEL") replaces the kind of every instance group.
    The harness has no GPU: KIND_AUTO resolves to CPU, as on the CPU machines.
    """
    config = _copy(config)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    if not config.name:
        config.name = model_dir.name
    versions = version_dirs(model_dir)
    files = {p.name for p in (model_dir / str(versions[-1])).iterdir()} if versions else set()
    if not config.backend and (
        config.default_model_filename == "model.py"
        or (not config.platform and not config.default_model_filename and "model.py" in files)
    ):
        config.backend = "python"
    if config.backend == "python" and not config.default_model_filename:
        config.default_model_filename = "model.py"
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    batching = config.max_batch_size > 0  # preferred sizes default to max_batch_size
    dynamic = config.dynamic_batching
    if config.HasField("dynamic_batching") and not dynamic.preferred_batch_size and batching:
        dynamic.preferred_batch_size.append(config.max_batch_size)
    if config.HasField("sequence_batching"):
        sequence = config.sequence_batching
        if sequence.max_sequence_idle_microseconds == 0:
            sequence.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_MICROSECONDS
        oldest = sequence.oldest
        if sequence.HasField("oldest") and not oldest.preferred_batch_size and batching:
            oldest.preferred_batch_size.append(config.max_batch_size)
    if not config.HasField("ensemble_scheduling"):
        optimization = config.optimization
        if not optimization.HasField("input_pinned_memory"):
            optimization.input_pinned_memory.enable = True
        if not optimization.HasField("output_pinned_memory"):
            optimization.output_pinned_memory.enable = True
        _normalize_instance_groups(config, instance_kind, device_id)
    return config


def _normalize_instance_groups(
    config: ModelConfig, instance_kind: str | None, device_id: int
) -> None:
    group_type = model_config_pb2.ModelInstanceGroup
    if not config.instance_group:
        config.instance_group.add(name=config.name)
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if instance_kind is not None:
            group.kind = group_type.Kind.Value(f"KIND_{instance_kind}")
            del group.gpus[:]
        if group.kind == group_type.KIND_AUTO:
            group.kind = group_type.KIND_CPU
        if group.count < 1:
            group.count = 1
        if group.kind == group_type.KIND_GPU and not group.gpus:
            group.gpus.append(device_id)


def instance_kind(config: ModelConfig) -> str:
    """What `args["model_instance_kind"]` says for the first instance: "CPU", "GPU", ..."""
    kind = model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)
    return KIND_NAMES[kind]


def instance_name(config: ModelConfig) -> str:
    """The first instance's name, "<group name>_0", used in the server's error messages."""
    return f"{config.instance_group[0].name}_0"


def to_dict(config: ModelConfig) -> dict[str, Any]:
    """The config as Triton's JSON object: defaults included, declaration order, int64 as int."""
    try:
        data = json_format.MessageToDict(
            config, preserving_proto_field_name=True, including_default_value_fields=True
        )
    except TypeError:  # protobuf >= 5.26 renamed the option
        data = json_format.MessageToDict(
            config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    return _as_triton_writes(config.DESCRIPTOR, data)


def to_json(config: ModelConfig) -> str:
    """The exact text the server puts in `args["model_config"]` and /v2/models/<m>/config."""
    return json.dumps(to_dict(config), separators=(",", ":"), ensure_ascii=False)


def from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """A config dict (say from auto_complete_config) back into the schema; unknown keys fail."""
    return json_format.ParseDict(dict(data), ModelConfig())


def _as_triton_writes(descriptor: Any, data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    ordered: dict[str, Any] = {}
    for fd in descriptor.fields:  # declaration order, as the C++ JSON printer writes
        if fd.name not in data:
            continue
        ordered[fd.name] = _field_value(fd, data[fd.name])
    return ordered


def _field_value(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        if fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            # The server's order varies from start to start; sorted is one of its orders.
            return {k: _field_value(value_fd, value[k]) for k in sorted(value)}
        if fd.label == FieldDescriptor.LABEL_REPEATED:
            return [_as_triton_writes(fd.message_type, v) for v in value]
        return _as_triton_writes(fd.message_type, value)
    if fd.label == FieldDescriptor.LABEL_REPEATED:
        return [_scalar(fd, v) for v in value]
    return _scalar(fd, value)


def _scalar(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type in _INT64:
        return int(value)
    if fd.type in _FLOATS and isinstance(value, float) and value.is_integer():
        return int(value)  # the C++ printer writes 1.0 as 1
    return value


def _copy(config: ModelConfig) -> ModelConfig:
    copy = ModelConfig()
    copy.CopyFrom(config)
    return copy
