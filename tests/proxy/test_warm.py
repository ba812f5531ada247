"""Warming a proxy's relay up: QEMU's scripted conversation, in the interface's own mode."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest
from bench.bench_relay import main as bench_relay_main

from tests.helpers import open_fd_count, run_bounded
from vhostcompat.profiles import load_default_catalog
from vhostcompat.proxy import ProxyPolicy
from vhostcompat.proxy.timings import RelayTimings
from vhostcompat.proxy.warm import converse_once, guest_memory, warm_up


@pytest.mark.parametrize("version", ["debian12.dpdk-vhost.v22.11", "upstream.ovs-dpdk.v2.6"])
def test_the_scripted_conversation_goes_through_a_relay_in_each_mode(version: str) -> None:
    policy = ProxyPolicy(load_default_catalog().get(version))
    timings = RelayTimings()
    fds_before = open_fd_count()

    async def scenario() -> None:
        memory = guest_memory()
        try:
            await converse_once(policy, memory, timings)
        finally:
            os.close(memory)

    run_bounded(scenario(), 20)
    relayed = {(sample.request, sample.direction) for sample in timings.samples}
    # The device start and the migration's stop went through, replies included.
    assert {("SET_MEM_TABLE", "request"), ("SET_VRING_KICK", "request"),
            ("GET_VRING_BASE", "reply"), ("GET_FEATURES", "reply")} <= relayed
    assert open_fd_count() == fds_before


def test_warming_up_is_quiet_and_leaves_the_loggers_as_they_were(
        caplog: pytest.LogCaptureFixture) -> None:
    relay_logger = logging.getLogger("vhostcompat.proxy.relay")
    relay_logger.setLevel(logging.INFO)
    caplog.set_level(logging.INFO)
    try:
        policy = ProxyPolicy(load_default_catalog().get("upstream.ovs-dpdk.v2.6"))
        assert asyncio.run(warm_up(policy, rounds=2)) is True
        assert relay_logger.level == logging.INFO
        assert not [record for record in caplog.records if record.levelno >= logging.INFO
                    and record.name.startswith("vhostcompat.proxy.relay")]
    finally:
        relay_logger.setLevel(logging.NOTSET)


def test_the_relay_bench_reports_every_replayed_message(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_relay_main(["--connections", "2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    per_connection = document["messages"] / 2
    assert per_connection == document["relay_us"]["all"]["count"] / 2
    assert document["relay_us"]["SET_MEM_TABLE request"]["count"] == 2
    assert document["relay_us"]["all"]["cpu_p50_us"] > 0
