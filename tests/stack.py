"""What the tests that run whole deployments on this host share (tests/test_compose.py,
tests/test_k8s.py): the host's ports they need, and waiting for what they start."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Sequence

import pytest


def ports_taken(ports: Sequence[int]) -> list[int]:
    """Those of `ports` something on this host already listens on."""
    taken = []
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    return taken


def answers(url: str) -> bool:
    """`url` answers 200 (health and readiness endpoints)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check` until it holds; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(2)
