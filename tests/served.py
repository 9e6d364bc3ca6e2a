"""One request to a served speech model, a model's readiness and a metric's value: the calls
tests of a whole server (local or the image's container) make between their real assertions."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient

from tools.local_server import LocalTritonServer


def transcribe(server: LocalTritonServer, audio: bytes) -> str:
    """What `stt` hears in one encoded recording, over HTTP."""
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
    try:
        tensor = httpclient.InferInput("audio", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[audio]], dtype=np.object_))
        return client.infer("stt", [tensor]).as_numpy("text")[0, 0].decode()
    finally:
        client.close()


def speak(server: LocalTritonServer, text: str, speaking_rate: float | None = None) -> bytes:
    """`text` spoken by `tts`: the encoded audio (WAV by default)."""
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=600)
    try:
        tensor = httpclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        tensors = [tensor]
        if speaking_rate is not None:
            rate = httpclient.InferInput("speaking_rate", [1, 1], "FP32")
            rate.set_data_from_numpy(np.array([[speaking_rate]], dtype=np.float32))
            tensors.append(rate)
        return bytes(client.infer("tts", tensors).as_numpy("audio")[0, 0])
    finally:
        client.close()


def model_ready(server: LocalTritonServer, model: str) -> bool:
    """GET /v2/models/<model>/ready: 200, or 400 while the model is not loaded."""
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/ready") as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def metric(server: LocalTritonServer, name: str, model: str) -> float:
    """A model's series of metric `name` on the server's :8002/metrics (0 before it exists)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode("utf-8")
    match = re.search(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0
