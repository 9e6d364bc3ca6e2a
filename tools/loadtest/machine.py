"""What every figure depends on: the machine, its load, and how much CPU others took meanwhile."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded: other work on the machine skews everything."""
    return [round(x, 2) for x in os.getloadavg()]


def _mib_fields(path: str, keys: tuple[str, ...]) -> dict[str, float]:
    """`key: N kB` lines of a /proc file, in MiB."""
    fields = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in keys:
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def proc_memory(pid: int) -> dict[str, float]:
    """Resident and peak resident memory (MiB) of a process, from /proc (Linux)."""
    fields = _mib_fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


def shared_memory(pid: int) -> dict[str, float]:
    """Resident memory (MiB) of a process, and its proportional share: pages it shares with
    other processes (a forked stub's libraries, the page cache of a mapped file) counted
    divided among them, so that the shares of all processes add up to what they hold."""
    fields = _mib_fields(f"/proc/{pid}/smaps_rollup", ("Rss", "Pss"))
    return {"rss_mib": fields["Rss"], "pss_mib": fields["Pss"]}


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and OS: the context every figure depends on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


class CpuProbe:
    """How much CPU other processes took while we measured: the machine's busy time minus this
    process tree's (the suite, a local tritonserver and its stubs, perf_analyzer).

    The load average is a one-minute moving average, too slow to tell which measurement a
    neighbour's test suite hit; this is exact per measurement. It matters more than it seems:
    torch's threads wait for each other at every operation, so a neighbour that takes one of
    two cores can slow a decoding step several times over, not by half. A remote server's CPU
    is not seen here: the figure then describes the client machine only. A server on this
    machine that another shell started is counted as ours when `also` lists its pid (with its
    children: the model stubs), since its work is the work being measured.
    """

    other_cpu_pct = 0.0
    steal_pct = 0.0

    def __init__(self, also: tuple[int, ...] = ()) -> None:
        self.also = also

    def __enter__(self) -> CpuProbe:
        import time

        self._wall = time.monotonic()
        self._system = self._system_times()
        self._own = self._own_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        import time

        wall = time.monotonic() - self._wall
        system = self._system_times()
        busy = system[0] - self._system[0]
        steal = system[1] - self._system[1]
        own = self._own_seconds() - self._own
        capacity = max(1e-9, wall * (os.cpu_count() or 1))
        self.other_cpu_pct = round(100 * max(0.0, busy - own) / capacity, 1)
        self.steal_pct = round(100 * steal / capacity, 1)

    @staticmethod
    def _system_times() -> tuple[float, float]:
        import psutil

        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        return busy, getattr(t, "steal", 0.0)

    def _own_seconds(self) -> float:
        import psutil

        mine = os.times()
        total = mine.user + mine.system + mine.children_user + mine.children_system
        processes = {p.pid: p for p in psutil.Process().children(recursive=True)}
        for pid in self.also:
            try:
                process = psutil.Process(pid)
                processes[pid] = process
                processes.update({c.pid: c for c in process.children(recursive=True)})
            except psutil.Error:
                continue
        for process in processes.values():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def record(self) -> dict[str, float]:
        return {"other_cpu_pct": self.other_cpu_pct, "steal_pct": self.steal_pct}


def listening_pid(host_port: str) -> int | None:
    """The process on this machine listening on the port of a local `host:port`, or None
    (a remote host, or a port this user cannot see)."""
    import psutil

    host, _, port = host_port.rpartition(":")
    if host not in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]", "::1") or not port.isdigit():
        return None
    try:
        for connection in psutil.net_connections(kind="tcp"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr
                and connection.laddr.port == int(port)
            ):
                return connection.pid
    except psutil.Error:
        return None
    return None
