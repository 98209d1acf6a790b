"""Image size from the file header, so scanning a large dataset does not decode every image.

PNG and JPEG sizes come from their headers and the file tail is checked for the end marker, which
catches truncated downloads; other formats (and files whose header cannot be parsed) fall back to a
full ``cv2.imread``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2

from obbslim.errors import InputError

IMG_FORMATS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_size(f, size: int) -> tuple[int, int] | None:
    head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_SIG or head[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", head[16:24])
    f.seek(max(0, size - 12))
    if f.read(12) != _PNG_END:
        raise ValueError("truncated PNG (no IEND chunk)")
    return h, w


def _jpeg_size(f, size: int) -> tuple[int, int] | None:
    if f.read(2) != b"\xff\xd8":
        return None
    hw = None
    while True:
        b = f.read(1)
        if not b:
            break
        if b != b"\xff":
            continue  # not at a marker: corrupt stream, keep scanning for the next one
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            break
        m = marker[0]
        if m == 0xD8 or m == 0x01 or 0xD0 <= m <= 0xD7:
            continue  # standalone markers without a length
        if m == 0xD9 or m == 0xDA:
            break  # end of image / start of scan before any frame header
        seg = f.read(2)
        if len(seg) < 2:
            break
        (length,) = struct.unpack(">H", seg)
        if m in _JPEG_SOF:
            body = f.read(5)
            if len(body) < 5:
                break
            h, w = struct.unpack(">HH", body[1:5])
            hw = (h, w)
            break
        f.seek(length - 2, 1)
    if hw is None:
        raise ValueError("corrupt JPEG (no frame header)")
    f.seek(max(0, size - 1024))
    if b"\xff\xd9" not in f.read(1024):
        raise ValueError("truncated JPEG (no end-of-image marker)")
    return hw


def image_size(path: str | Path) -> tuple[int, int]:
    """Return (height, width) of an image; raise InputError if it is unreadable, corrupt or empty."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            hw = _png_size(f, size)
            if hw is None:
                f.seek(0)
                hw = _jpeg_size(f, size)
    except OSError as e:
        if path.is_symlink() and not path.exists():
            raise InputError(f"broken symbolic link (to {os.readlink(path)})", path) from None
        raise InputError(f"unreadable image ({e.strerror or e})", path) from None
    except (ValueError, struct.error) as e:
        raise InputError(f"corrupt image: {e}", path) from None
    if hw is None:  # neither PNG nor JPEG: decode it
        im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise InputError("corrupt or unsupported image (cv2 cannot decode it)", path)
        hw = (int(im.shape[0]), int(im.shape[1]))
    if hw[0] < 1 or hw[1] < 1:
        raise InputError(f"corrupt image: size {hw[1]}x{hw[0]}", path)
    return int(hw[0]), int(hw[1])
