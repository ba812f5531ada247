"""``manager.run``: a verb from synchronous code, on the loop the CLI uses."""

from __future__ import annotations

import asyncio

import pytest

from vhostcompat import manager
from vhostcompat.errors import InputError


def test_a_coroutine_runs_on_uvloop_and_its_result_is_returned() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert manager.run(loop_module()).startswith("uvloop")


def test_a_verb_s_error_is_raised_as_it_is() -> None:
    with pytest.raises(InputError, match="listed twice"):
        manager.run(manager.versions(["/srv/a", "/srv/a"]))
