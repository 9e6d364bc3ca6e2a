"""On the real tritonserver: the two races of 2.51's stub that the chat fronts' pattern
(worker threads reading decoupled BLS streams, answering through the response sender) runs
into, each killing the stub within minutes under load, and the package's way around each.

- A response sent through a response sender that carries outputs the client did not ask
  for: the stub drops them inside `send()` with the GIL released (python_backend r24.10's
  `ResponseSender::Send` -> `PruneOutputTensors`), freeing their arrays without the GIL.
  `serving.tensors.sent_response` sends only the requested outputs.
- A BLS stream let go before the stub has sent its cleanup: the stub's own reference is then
  the last, and its stub-to-parent thread frees the stream's responses without the GIL.
  `serving.bls.FinishedStreams` lets go of a stream only after a cancellation check's round
  trip has passed its cleanup.

`stub_race_front` runs the pattern in three modes (its config.pbtxt): the safe one must keep
the stub serving under a load that kills it, within a bound, in each unsafe one (proving the
load reproduces both races, so the first test could have failed). One server per test: the
unsafe ones end with a dead stub.
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
race_server = server_fixture(CONTRACT, ["stub_race_engine", "stub_race_front"], "function")

pytestmark = pytest.mark.server

CLIENTS = 48
SURVIVES_SECONDS = 45
DIES_WITHIN_SECONDS = 120


@dataclass
class Load:
    """CLIENTS closed-loop clients asking `stub_race_front` for `text` only, until stopped."""

    url: str
    mode: str
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=20)
        inputs = [
            httpclient.InferInput("prompt", [1], "BYTES"),
            httpclient.InferInput("mode", [1], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(np.array([b"hi"], np.object_))
        inputs[1].set_data_from_numpy(np.array([self.mode.encode()], np.object_))
        wanted = [httpclient.InferRequestedOutput("text")]
        while not self.stop.is_set():
            try:
                result = client.infer("stub_race_front", inputs, outputs=wanted)
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


def test_the_fronts_pattern_done_safely_keeps_the_stub_alive(race_server: RunningServer) -> None:
    safe = Load(race_server.http_url, "safe")
    safe.run(SURVIVES_SECONDS)
    assert safe.failures == [] and safe.answered > 1000, safe.failures[:3]


@pytest.mark.parametrize("mode", ["unfiltered", "let_go"])
def test_each_unsafe_step_kills_the_stub(race_server: RunningServer, mode: str) -> None:
    unsafe = Load(race_server.http_url, mode)
    ran = unsafe.run(DIES_WITHIN_SECONDS)
    assert unsafe.failures, f"the stub survived {ran:.0f} s: the load no longer reproduces"
    assert any("not healthy" in f or "timed out" in f for f in unsafe.failures), unsafe.failures[:3]
