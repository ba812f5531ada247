"""Fuzzing the decoder and the session with random and mutated byte streams.

What must hold for any input: only the project's RemoteProtocolError comes
out (never another exception), every message that does come out re-encodes
to exactly the bytes it was decoded from, and the process has the same fds
open before and after (every fd fed in is either handed out in a message,
which the test closes, or closed by the decoder/session that refused it).
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import open_fd_count
from tests.vhostuser.helpers import CASES, sample_message
from vhostcompat.errors import RemoteProtocolError
from vhostcompat.vhostuser import (
    BackendRequest,
    Channel,
    Decoder,
    FrontendRequest,
    Role,
    Session,
    encode,
)

SEED = 0x5EED_7E57
STREAMS = 100_000
KINDS = [(Channel.FRONTEND, Role.FRONTEND), (Channel.FRONTEND, Role.BACKEND),
         (Channel.BACKEND, Role.BACKEND), (Channel.BACKEND, Role.FRONTEND)]
HEADER_FIELD = struct.Struct("=I")


@dataclass
class Stats:
    streams: int = 0
    messages: int = 0
    refusals: int = 0
    fds_fed: int = 0
    reasons: set[str] = field(default_factory=set)


def valid_encodings() -> dict[tuple[Channel, Role], list[tuple[bytes, int]]]:
    """Every message kind of the table, encoded, with its fd count, per decoder kind."""
    corpus: dict[tuple[Channel, Role], list[tuple[bytes, int]]] = {kind: [] for kind in KINDS}
    for case in CASES:
        message = sample_message(case)
        data, fds = encode(message)
        corpus[(case.channel, case.sender)].append((data, len(fds)))
    return corpus


class FdSource:
    """Makes fds to feed (dups of one /dev/null fd) and counts them."""

    def __init__(self) -> None:
        self.base = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def take(self, count: int) -> list[int]:
        return [os.dup(self.base) for _ in range(count)]

    def close(self) -> None:
        os.close(self.base)


def mutate(rng: random.Random, stream: bytearray) -> bytearray:
    choice = rng.randrange(9)
    if choice == 0 or not stream:
        return stream  # valid streams must pass untouched
    if choice == 1:
        for _ in range(rng.randint(1, 4)):
            stream[rng.randrange(len(stream))] = rng.randrange(256)
    elif choice == 2:  # a header field of the first message: request, flags or size
        offset = rng.choice((0, 4, 8))
        value = rng.choice((rng.randrange(64), rng.randrange(1 << 32), 0, 0xFFFF_FFFF,
                            rng.randrange(300), 1, 5, 9))
        if len(stream) >= offset + 4:
            HEADER_FIELD.pack_into(stream, offset, value)
    elif choice == 3:
        del stream[rng.randrange(len(stream)):]
    elif choice == 4:
        at = rng.randrange(len(stream) + 1)
        stream[at:at] = rng.randbytes(rng.randint(1, 16))
    elif choice == 5:
        stream += rng.randbytes(rng.randint(1, 40))
    elif choice == 6:
        stream = bytearray(rng.randbytes(rng.randint(0, 80)))
    elif choice == 7:  # size field off by a little
        if len(stream) >= 12:
            size = HEADER_FIELD.unpack_from(stream, 8)[0]
            HEADER_FIELD.pack_into(stream, 8, max(0, size + rng.choice((-8, -1, 1, 8, 256))))
    else:
        at = rng.randrange(len(stream))
        del stream[at:at + rng.randint(1, 8)]
    return stream


def chunks(rng: random.Random, stream: bytes) -> Iterator[bytes]:
    count = min(rng.randint(0, 3), max(0, len(stream) - 1))
    cuts = sorted(rng.sample(range(1, len(stream)), count))
    start = 0
    for cut in [*cuts, len(stream)]:
        yield stream[start:cut]
        start = cut


def well_formed(rng: random.Random, picked: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """Each message as its own send, maybe received in two parts, fds with its first byte."""
    pieces = []
    for data, count in picked:
        cut = rng.randint(1, len(data))
        pieces.append((data[:cut], count))
        if cut < len(data):
            pieces.append((data[cut:], 0))
    return pieces


def mangled(rng: random.Random, picked: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """The messages mutated, cut anywhere, with the fds they need or any count."""
    stream = bytes(mutate(rng, bytearray(b"".join(data for data, _ in picked))))
    pieces = list(chunks(rng, stream)) or [b""]
    if rng.random() < 0.7:
        counts = [0] * len(pieces)
        counts[0] = sum(count for _, count in picked)
    else:
        counts = [rng.choice((0, 0, 1, 2, 3, 8, 9, 12)) for _ in pieces]
    return list(zip(pieces, counts, strict=True))


def run_stream(kind: tuple[Channel, Role], pieces: list[tuple[bytes, int]],
               source: FdSource, stats: Stats) -> bool:
    """Feed ``pieces`` (bytes, fd count) to a decoder and a session; check the invariants.

    Returns whether the decoder refused the stream.
    """
    channel, sender = kind
    decoder = Decoder(channel, sender=sender)
    session = Session(sender.peer)
    fed = bytearray()
    decoded = bytearray()
    stats.streams += 1
    try:
        for data, fd_count in pieces:
            fds = source.take(fd_count)
            stats.fds_fed += fd_count
            fed += data
            decoder.feed(data, fds)
            for message in decoder:
                stats.messages += 1
                decoded += encode(message)[0]
                assert fed.startswith(decoded), "re-encoding changed the bytes"
                try:
                    session.receive(message)
                except RemoteProtocolError:
                    pass  # the session closed the message's fds
                else:
                    for fd in message.fds:
                        os.close(fd)
        decoder.end_of_stream()
    except RemoteProtocolError as error:
        stats.refusals += 1
        stats.reasons.add(str(error).split(":")[0])
        return True
    finally:
        decoder.close()
    return False


def test_100000_random_and_mutated_streams() -> None:
    rng = random.Random(SEED)
    corpus = valid_encodings()
    before = open_fd_count()
    source = FdSource()
    stats = Stats()
    try:
        for number in range(STREAMS):
            kind = KINDS[rng.randrange(len(KINDS))]
            picked = [rng.choice(corpus[kind]) for _ in range(rng.randint(1, 3))]
            valid = rng.random() < 0.3
            pieces = well_formed(rng, picked) if valid else mangled(rng, picked)
            try:
                refused = run_stream(kind, pieces, source, stats)
                assert not (valid and refused), f"valid stream refused: {stats.reasons}"
            except Exception as error:
                raise AssertionError(f"stream {number} (seed {SEED:#x}): {error!r}") from error
    finally:
        source.close()
    assert open_fd_count() == before, "fds leaked"
    assert stats.streams == STREAMS
    # The corpus covers the table: both valid messages and refusals must be common.
    assert stats.messages > STREAMS // 2
    assert stats.refusals > STREAMS // 10
    assert stats.fds_fed > STREAMS // 10


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(KINDS),
       st.lists(st.tuples(st.binary(max_size=120), st.integers(0, 10)), min_size=1,
                max_size=4))
def test_arbitrary_bytes_and_fd_counts(kind: tuple[Channel, Role],
                                       pieces: list[tuple[bytes, int]]) -> None:
    before = open_fd_count()
    source = FdSource()
    try:
        run_stream(kind, pieces, source, Stats())
    finally:
        source.close()
    assert open_fd_count() == before


@pytest.mark.parametrize("code", [0, 44, 1000, 0xFFFF_FFFF])
def test_codes_outside_the_table(code: int) -> None:
    assert code not in set(FrontendRequest) | set(BackendRequest) or code == 0
    source = FdSource()
    stats = Stats()
    run_stream(KINDS[0], [(struct.pack("=III", code, 1, 0), 1)], source, stats)
    source.close()
    assert stats.refusals == 1
    assert stats.reasons == {f"unknown front-end request {code}"}


def test_valid_corpus_needs_its_fds() -> None:
    # Sanity of the corpus itself: unmutated, every message decodes.
    corpus = valid_encodings()
    assert sum(len(entries) for entries in corpus.values()) == len(CASES)
    source = FdSource()
    stats = Stats()
    for kind, entries in corpus.items():
        for data, count in entries:
            run_stream(kind, [(data, count)], source, stats)
    source.close()
    assert stats.messages == len(CASES)
    assert stats.refusals == 0
