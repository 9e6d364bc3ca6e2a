"""On the real tritonserver: a response sent through a response sender that carries outputs
the client did not ask for kills 2.51's stub, and `serving.tensors.sent_response` does not.

The stub drops unrequested outputs inside `send()` with the GIL released (python_backend
r24.10's `ResponseSender::Send` -> `PruneOutputTensors`), freeing the tensors' arrays without
the GIL, for any client that names some of the outputs. `pruning_front` is the chat
fronts' pattern (worker threads reading BLS streams, answering through the sender) under a
load that makes the race common: the same load first runs on `sent_response` and must leave
the stub serving, then on a response with every output, and must kill it (proving that the
load reproduces the crash, so the first half could have failed).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.harness.server_fixture import RunningServer, server_fixture

CONTRACT = Path(__file__).parent / "contract_models"
pruning_server = server_fixture(CONTRACT, ["pruning_engine", "pruning_front"])

pytestmark = pytest.mark.server

CLIENTS = 48
SURVIVES_SECONDS = 45  # the unfiltered stub died after 1-30 s of this load in 10 tries
DIES_WITHIN_SECONDS = 120


@dataclass
class Load:
    """CLIENTS closed-loop clients asking `pruning_front` for `text` only, until stopped."""

    url: str
    filtered: bool
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=20)
        inputs = [
            httpclient.InferInput("prompt", [1], "BYTES"),
            httpclient.InferInput("filtered", [1], "BOOL"),
        ]
        inputs[0].set_data_from_numpy(np.array([b"hi"], np.object_))
        inputs[1].set_data_from_numpy(np.array([self.filtered]))
        wanted = [httpclient.InferRequestedOutput("text")]
        while not self.stop.is_set():
            try:
                result = client.infer("pruning_front", inputs, outputs=wanted)
                assert result.as_numpy("text")[0].startswith(b"piece 0 ")
                assert result.as_numpy("extra0") is None
                with self.lock:
                    self.answered += 1
            except Exception as exc:  # a dead stub: "not healthy", or no answer (timeout)
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
                self.stop.set()

    def run(self, seconds: float) -> float:
        """Run until `seconds` pass or a request fails; the seconds it ran."""
        threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        self.stop.wait(seconds)
        self.stop.set()
        for thread in threads:
            thread.join()
        return time.monotonic() - start


def test_only_requested_outputs_through_the_sender_keep_the_stub_alive(
    pruning_server: RunningServer,
) -> None:
    filtered = Load(pruning_server.http_url, filtered=True)
    filtered.run(SURVIVES_SECONDS)
    assert filtered.failures == [] and filtered.answered > 1000, filtered.failures[:3]

    unfiltered = Load(pruning_server.http_url, filtered=False)
    ran = unfiltered.run(DIES_WITHIN_SECONDS)
    assert unfiltered.failures, f"the stub survived {ran:.0f} s: the load no longer reproduces"
    assert any("not healthy" in f or "timed out" in f for f in unfiltered.failures), (
        unfiltered.failures[:3]
    )
