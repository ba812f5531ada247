"""The do-nothing guest firmware: a 64 KiB BIOS image that halts the CPU.

With ``-bios`` pointing at this image QEMU's vCPU executes ``cli; hlt`` at
the reset vector and sleeps forever, so a test process can play the guest
driver over qtest without a guest OS and without burning CPU. Every other
byte is ``hlt`` too, so a stray jump also halts.
"""

from __future__ import annotations

from pathlib import Path

FIRMWARE_SIZE = 0x10000
# x86 starts at physical 0xFFFFFFF0, which is offset 0xFFF0 of a 64 KiB BIOS.
RESET_VECTOR_OFFSET = 0xFFF0
HLT = 0xF4
# cli; hlt; jmp short -3 (back to the hlt, should an interrupt ever wake it)
RESET_CODE = bytes((0xFA, 0xF4, 0xEB, 0xFD))


def halt_firmware() -> bytes:
    """The image: all ``hlt``, with ``cli; hlt; jmp -3`` at the reset vector."""
    image = bytearray([HLT]) * FIRMWARE_SIZE
    image[RESET_VECTOR_OFFSET:RESET_VECTOR_OFFSET + len(RESET_CODE)] = RESET_CODE
    return bytes(image)


def write_halt_firmware(path: Path) -> Path:
    """Write the image to ``path`` (replacing it) and return the path."""
    path.write_bytes(halt_firmware())
    return path
