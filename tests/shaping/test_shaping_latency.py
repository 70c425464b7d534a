"""Queueing delay of a saturated class: ping RTT from a fake VM while its own TCP upload
fills its 10 Mbit/s class, with HTB's default pfifo and with hookpack's bounded leaf, in
the same run (bench/shaping_latency.py). This kernel has no fq_codel: the leaf is the
segmenting tbf fallback; the stock-kernel guest runs the same with fq_codel
(tests/shaping_guest/test_in_guest.py::test_latency_in_guest).
"""

from __future__ import annotations

import pytest

from bench.shaping_latency import run

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_bounded_leaf_keeps_ping_p95_under_20ms_while_the_class_is_full():
    default, bounded = run(6, ["default", "auto"])
    for row in (default, bounded):
        print(f"\nleaf {row['leaf_setting']} ({row['leaf']}): p50 {row['p50_ms']} ms, "
              f"p95 {row['p95_ms']} ms, max {row['max_ms']} ms, loss {row['loss']}, "
              f"upload {row['upload_goodput_mbit']} Mbit/s")
    assert bounded["leaf"].startswith(("fq_codel", "tbf")), bounded
    assert bounded["p95_ms"] <= 20, bounded
    assert bounded["loss"] <= 0.02, bounded
    # the class stays full: goodput within 10 % of 10 Mbit/s on the wire (MSS 1448)
    assert bounded["upload_goodput_mbit"] * 1514 / 1448 >= 9.0, bounded
    # the default pfifo, same run: the upload queues behind itself (the benchmark sees it)
    assert default["leaf"].startswith("pfifo") and default["p95_ms"] > 2 * bounded["p95_ms"]
