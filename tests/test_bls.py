"""`serving.bls.FinishedStreams`, and the harness rule it answers: a decoupled BLS stream let
go before the stub has sent its cleanup is a crash (tests/test_stub_races_server.py shows the
real stub dying of it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.bls import FinishedStreams
from tests.harness import pb_utils as mock
from tests.harness.errors import ServerCrash
from tests.harness.runner import ModelHarness

CONTRACT = Path(__file__).parent / "contract_models" / "contract"
PIECES = 3


@pytest.fixture
def harness() -> Iterator[ModelHarness]:
    """A model instance whose BLS calls to `engine` stream PIECES responses."""
    with ModelHarness(CONTRACT) as h:
        h.bls_models["engine"] = lambda request: [mock.InferenceResponse()] * PIECES
        yield h


def stream(pb: Any) -> Any:
    return pb.InferenceRequest(model_name="engine", inputs=[], requested_output_names=[]).exec(
        decoupled=True
    )


def client_request(cancelled: bool = False) -> Any:
    request = mock.server_request(
        [], request_id="", requested=set(), parameters="{}", decoupled=False, model_name="m"
    )
    if cancelled:
        mock.cancel(request)
    return request


def test_a_stream_let_go_right_after_its_end_crashes_the_stub(harness: ModelHarness) -> None:
    with harness.activated() as pb:
        assert len(list(stream(pb))) == PIECES  # read to its end, then let go at once
    assert harness.instance.crashes and isinstance(harness.instance.crashes[0], ServerCrash)
    assert "serving.bls.FinishedStreams" in str(harness.instance.crashes[0])
    harness.instance.crashes.clear()


def test_an_unfinished_stream_let_go_is_no_crash(harness: ModelHarness) -> None:
    """Its cleanup is never queued: the real stub keeps it (a leak, which release() avoids)."""
    with harness.activated() as pb:
        next(stream(pb))
    assert harness.instance.crashes == []


def test_released_streams_are_read_to_their_end_and_let_go_safely(
    harness: ModelHarness,
) -> None:
    streams = FinishedStreams()
    with harness.activated() as pb:
        unread, read = stream(pb), stream(pb)
        assert len(list(read)) == PIECES
        streams.release([unread, read], client_request())
        assert next(unread, None) is None  # read to its end by release()
        assert streams.kept() == 0
        del unread, read
    assert harness.instance.crashes == []


def test_a_cancelled_requests_streams_wait_for_another_requests_check(
    harness: ModelHarness,
) -> None:
    """A request seen cancelled answers from its cache: no round trip passes the cleanup."""
    streams = FinishedStreams()
    cancelled = client_request(cancelled=True)
    with harness.activated() as pb:
        assert cancelled.is_cancelled()  # seen: later checks are answered from the cache
        streams.release([stream(pb)], cancelled)
        streams.release([stream(pb)], cancelled)
        assert streams.kept() == 2
        streams.release([stream(pb)], client_request())
        assert streams.kept() == 0
    assert harness.instance.crashes == []
