"""ovsdb.remotes: unix:PATH, tcp:IP:PORT and lists; every malformed form refused by reason."""

from __future__ import annotations

import pytest

from vhostcompat.ovsdb import OvsdbRemoteError, Remote, looks_like_remote, parse_remotes


def test_members_parse_in_order() -> None:
    remotes = parse_remotes("unix:/run/db.sock, tcp:127.0.0.1:6641,tcp:[::1]:6642")
    assert remotes == (Remote("unix", path="/run/db.sock"),
                       Remote("tcp", host="127.0.0.1", port=6641),
                       Remote("tcp", host="::1", port=6642))
    assert [str(remote) for remote in remotes] == [
        "unix:/run/db.sock", "tcp:127.0.0.1:6641", "tcp:[::1]:6642"]


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty remote"), ("unix:", "needs a socket path"),
    ("tcp:127.0.0.1", "expected tcp:IP:PORT"), ("tcp:localhost:6640", "not an IP address"),
    ("tcp:127.0.0.1:0", "not 1-65535"), ("tcp:127.0.0.1:70000", "not 1-65535"),
    ("tcp:127.0.0.1:66a", "not 1-65535"), ("tcp:[::1:6640", "expected tcp:[IPv6]:PORT"),
    ("ssl:127.0.0.1:6640", "ssl: is not supported"), ("ptcp:6640", "ptcp: is not supported"),
    ("unix:/a,,unix:/b", "empty member"), ("unix:/a,unix:/a", "listed twice"),
    ("/var/run/db.sock", "expected unix:PATH or tcp:IP:PORT"),
    ("unix:/" + "x" * 200, "longer than 107 bytes"),
])
def test_malformed_remotes_are_refused_in_one_line(text: str, reason: str) -> None:
    with pytest.raises(OvsdbRemoteError) as caught:
        parse_remotes(text)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_remote_syntax_is_told_apart_from_paths() -> None:
    assert looks_like_remote("unix:/x") and looks_like_remote("tcp:1.2.3.4:5")
    assert looks_like_remote("ssl:1.2.3.4:5")
    assert not looks_like_remote("/tmp/host-a") and not looks_like_remote("host-a")
