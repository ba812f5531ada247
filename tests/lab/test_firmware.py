"""The halt firmware: size, reset vector, and nothing but hlt elsewhere."""

from __future__ import annotations

from pathlib import Path

from vhostcompat.lab.firmware import (
    FIRMWARE_SIZE,
    HLT,
    RESET_CODE,
    RESET_VECTOR_OFFSET,
    halt_firmware,
    write_halt_firmware,
)


def test_image_is_64_kib_with_cli_hlt_jmp_at_the_reset_vector() -> None:
    image = halt_firmware()
    assert len(image) == 65536 == FIRMWARE_SIZE
    # x86 resets to 0xFFFFFFF0: the BIOS image ends at 4 GiB.
    assert len(image) - 16 == RESET_VECTOR_OFFSET
    assert image[0xFFF0:0xFFF4] == bytes((0xFA, 0xF4, 0xEB, 0xFD)) == RESET_CODE


def test_every_other_byte_is_hlt() -> None:
    image = halt_firmware()
    rest = image[:RESET_VECTOR_OFFSET] + image[RESET_VECTOR_OFFSET + len(RESET_CODE):]
    assert set(rest) == {HLT} == {0xF4}


def test_jump_lands_on_the_hlt() -> None:
    image = halt_firmware()
    jump_end = RESET_VECTOR_OFFSET + 4
    displacement = image[jump_end - 1] - 256  # signed 8-bit
    assert image[jump_end + displacement] == HLT


def test_write_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "halt.bin"
    path.write_bytes(b"old")
    assert write_halt_firmware(path) == path
    assert path.read_bytes() == halt_firmware()
