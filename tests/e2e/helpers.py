"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

SCENARIO_TIMEOUT = 60.0


def run_bounded(scenario: Coroutine[Any, Any, None], timeout: float = SCENARIO_TIMEOUT) -> None:
    """Run one asyncio scenario to its end, or fail it after ``timeout`` seconds."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await scenario

    asyncio.run(bounded())
