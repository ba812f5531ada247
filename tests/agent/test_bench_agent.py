"""The agent benchmark's figures come from the samples and the agent's own log times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.bench_agent import event_times, render, report


class FakeAgent:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def events(self, name: str) -> list[str]:
        return [line for line in self.lines if f" event={name} " in f"{line} "]


def test_event_times_are_read_from_the_log_timestamps() -> None:
    agent: Any = FakeAgent(["ts=1970-01-01T00:00:01.250Z level=info event=redirected iface=a",
                            "ts=1970-01-01T00:00:02.000Z level=info event=status iface=a"])
    assert event_times(agent, "redirected") == [1.25]
    assert event_times(agent, "proxy-started") == []


def test_report_medians_spread_and_target(tmp_path: Path) -> None:
    samples = {"assign": [{"vsctl": 10.0, "proxy-started": 12.0, "redirected": 30.0},
                          {"vsctl": 12.0, "proxy-started": 14.0, "redirected": 50.0}],
               "change": [{"vsctl": 9.0, "proxy-started": 20.0},
                          {"vsctl": 11.0, "proxy-started": 40.0}]}
    document = report(samples, 2)
    assert document["ms"]["assign"]["redirected"] == {"median": 40.0, "min": 30.0,
                                                      "max": 50.0, "stdev": 14.1}
    assert document["within_target"] is True
    assert "assign, median to serving: 40.0 ms (within the 100 ms target)" in render(document)
