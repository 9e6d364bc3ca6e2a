"""A running Triton server, wherever it is: readiness, model configs and statistics.

Everything goes through tritonclient over the protocol the run uses, so a check that passes
here means perf_analyzer can reach the same endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc.model_config_pb2 import ModelConfig


class NotReady(RuntimeError):
    """The server or a model cannot take the load; the message says which and why."""


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "grpc" or "http"
    url: str  # host:port, as perf_analyzer's -u takes it

    def __str__(self) -> str:
        return f"{self.url} ({self.protocol})"


def connect(endpoint: Endpoint, timeout_s: float = 30.0) -> Any:
    """A tritonclient client for the endpoint (nothing is sent yet)."""
    if endpoint.protocol == "grpc":
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(endpoint.url)
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        endpoint.url, connection_timeout=timeout_s, network_timeout=timeout_s
    )


def repository_index(client: Any) -> list[dict[str, str]]:
    """Every model the server knows, with its state and the reason it is not ready."""
    index = client.get_model_repository_index()
    if hasattr(index, "models"):  # gRPC: a RepositoryIndexResponse
        return [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in index.models
        ]
    return [{k: str(m.get(k, "")) for k in ("name", "version", "state", "reason")} for m in index]


def ready_models(client: Any) -> list[str]:
    return sorted({m["name"] for m in repository_index(client) if m["state"] == "READY"})


def check_ready(client: Any, endpoint: Endpoint, models: list[str]) -> None:
    """Raise NotReady with what is wrong: unreachable, not ready, or a model not loaded."""
    try:
        live = client.is_server_live()
    except Exception as exc:
        raise NotReady(
            f"cannot reach a Triton server at {endpoint}: {type(exc).__name__}: {exc}. "
            "Is it running and is this its address? (./scripts/serve starts one locally on "
            "HTTP 8000 / gRPC 8001; give another with --grpc-url / --http-url.)"
        ) from exc
    if not live:
        raise NotReady(f"the Triton server at {endpoint} is not live")
    if not client.is_server_ready():
        not_ready = [
            f"{m['name']}: {m['state'] or 'not loaded'} {m['reason']}".strip()
            for m in repository_index(client)
            if m["state"] != "READY"
        ]
        raise NotReady(
            f"the Triton server at {endpoint} is up but not ready"
            + (f"; models not ready: {'; '.join(not_ready)}" if not_ready else "")
        )
    for model in models:
        if client.is_model_ready(model):
            continue
        known = {m["name"]: m for m in repository_index(client)}
        if model in known:
            m = known[model]
            why = f"its state is {m['state'] or 'not loaded'}" + (
                f": {m['reason']}" if m["reason"] else ""
            )
        else:
            why = "the server does not know it"
        raise NotReady(
            f"model {model!r} is not ready on {endpoint}: {why}. Ready models: "
            f"{', '.join(ready_models(client)) or 'none'}"
        )


def model_config(client: Any, model: str) -> ModelConfig:
    """The model's config as the server completed it (the truth for building inputs)."""
    response = client.get_model_config(model)
    if hasattr(response, "config"):  # gRPC
        return response.config
    return json_format.ParseDict(response, ModelConfig(), ignore_unknown_fields=True)


def statistics(client: Any, model: str) -> dict[str, Any]:
    """Successful requests so far and executions per batch size (what the batcher formed)."""
    if hasattr(client, "get_inference_statistics") and "grpc" in type(client).__module__:
        stats = client.get_inference_statistics(model_name=model, as_json=True)
    else:
        stats = client.get_inference_statistics(model_name=model)
    entries = stats.get("model_stats", [])
    if not entries:
        return {"success": 0, "executions": {}}
    entry = entries[0]
    success = int(entry.get("inference_stats", {}).get("success", {}).get("count", 0))
    executions = {
        int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
        for b in entry.get("batch_stats", [])
    }
    return {"success": success, "executions": executions}


def executions_between(before: dict[str, Any], after: dict[str, Any]) -> dict[int, int]:
    """Executions per batch size that happened between two `statistics` readings."""
    diff = {
        size: count - before["executions"].get(size, 0)
        for size, count in after["executions"].items()
    }
    return {size: n for size, n in sorted(diff.items()) if n}
