"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.qemu import RunningQemu

SCENARIO_TIMEOUT = 60.0
DESTINATION_EXIT_TIMEOUT = 10.0


def run_bounded(scenario: Coroutine[Any, Any, None], timeout: float = SCENARIO_TIMEOUT) -> None:
    """Run one asyncio scenario to its end, or fail it after ``timeout`` seconds."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await scenario

    asyncio.run(bounded())


async def migrate_into_a_failed_load(source: RunningQemu, destination: RunningQemu, uri: str,
                                     acked: VirtioFeature, allowed: VirtioFeature) -> None:
    """Migrate, and see QEMU's upstream failure: the guest acked ``acked``, the destination
    allows only ``allowed``, so its load fails naming both masks and it exits; with
    return-path the source learns of it and keeps running."""
    result = await qmp.migrate(source, destination, uri)

    assert result["status"] == "failed", result
    assert await destination.wait_exit(DESTINATION_EXIT_TIMEOUT) != 0
    log = destination.process.log_text()
    assert (f"Features {int(acked):#x} unsupported. "
            f"Allowed features: {int(allowed):#x}") in log, log
    assert await qmp.run_state(source) == "running"
