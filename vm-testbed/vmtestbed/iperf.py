"""Throughput measurement with iperf3 (``-J`` output) against the netnode's sink."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

from vmtestbed.errors import TestbedError

# A runner runs argv somewhere (a fake VM, a guest over its console) and returns stdout:
# FakeVM.check_output, RunningInstance.check_output, or any callable alike.
Runner = Callable[[Sequence[str], float], str]


def measure(client_runner: Runner, server_ip: str, seconds: float = 3, reverse: bool = False,
            port: int = 5201, extra_args: Sequence[str] = (), attempts: int = 2,
            udp_mbit: float | None = None) -> float:
    """Run ``iperf3 -c server_ip -J`` through ``client_runner``; return Mbit/s received.

    ``reverse=True`` (``-R``): the server sends, so the client's download is
    measured. The number is the receiver's (``end.sum_received``), which is what
    a shaper on the path limits. A failed run (the sink still busy with the
    previous test, a control connection reset under load) is retried up to
    ``attempts`` times in all.

    ``udp_mbit``: send UDP at that rate (1400-byte datagrams) instead of TCP. A
    shaper test wants this: TCP backs off, UDP keeps offering more than the
    shaped rate, so what arrives is the shaper's rate (a TCG guest can offer up
    to ~100 Mbit/s, see vm-testbed/README.md).
    """
    udp = ["-u", "-b", f"{udp_mbit}M", "-l", "1400"] if udp_mbit else []
    # bounded where it runs: an iperf3 that hangs (no answer from the sink) must end
    # before the runner gives up, or a guest's console stays busy with it and the retry
    # never starts
    argv = ["timeout", "-k", "5", str(round(seconds + 20)), "iperf3", "-c", server_ip,
            "-p", str(port), "-t", str(seconds), "-J", *(["-R"] if reverse else []), *udp,
            *extra_args]
    for attempt in range(1, attempts + 1):
        try:
            return parse_json(client_runner(argv, seconds + 30))
        except TestbedError:
            if attempt == attempts:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def parse_json(output: str) -> float:
    """Mbit/s from iperf3 ``-J`` output (tolerates noise before and after the JSON)."""
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        raise TestbedError(f"iperf3: no JSON in output: {output[-500:]!r}")
    try:
        data = json.loads(output[start:end + 1])
    except ValueError as exc:
        raise TestbedError(f"iperf3: cannot parse JSON: {exc}: {output[-500:]!r}") from exc
    if "error" in data:
        raise TestbedError(f"iperf3: {data['error']}")
    try:
        # TCP and (iperf3 >= 3.10) UDP: the receiver's side is end.sum_received
        bps = float(data["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError) as exc:
        raise TestbedError(f"iperf3: no end.sum_received in result: {exc}") from exc
    return bps / 1e6
