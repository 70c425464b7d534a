"""Throughput measurement with iperf3 (``-J`` output) against the netnode's sink."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from vmtestbed.errors import TestbedError

# A runner runs argv somewhere (a fake VM, a guest over its console) and returns stdout:
# FakeVM.check_output, RunningInstance.check_output, or any callable alike.
Runner = Callable[[Sequence[str], float], str]


def measure(client_runner: Runner, server_ip: str, seconds: float = 3, reverse: bool = False,
            port: int = 5201, extra_args: Sequence[str] = ()) -> float:
    """Run ``iperf3 -c server_ip -J`` through ``client_runner``; return Mbit/s received.

    ``reverse=True`` (``-R``): the server sends, so the client's download is
    measured. The number is the receiver's (``end.sum_received``), which is what
    a shaper on the path limits.
    """
    argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J",
            *(["-R"] if reverse else []), *extra_args]
    out = client_runner(argv, seconds + 30)
    return parse_json(out)


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
        bps = float(data["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError) as exc:
        raise TestbedError(f"iperf3: no end.sum_received in result: {exc}") from exc
    return bps / 1e6
