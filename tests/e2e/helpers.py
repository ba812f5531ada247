"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.qemu import RunningQemu

DESTINATION_EXIT_TIMEOUT = 10.0



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
