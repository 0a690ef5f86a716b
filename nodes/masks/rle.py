"""COCO run-length encoding of binary masks (the ``segmentation`` field of COCO / SAM / InsightEdit JSON).

A mask ``[H, W]`` is read in column-major (Fortran) order and stored as alternating run lengths,
starting with a run of zeros (which may be 0 long): ``{"size": [H, W], "counts": ...}``.
``counts`` is either that list of integers ("uncompressed RLE") or COCO's compact string
(pycocotools ``maskApi.c`` rleToString / rleFrString): from the fourth run on (index > 2), each
count is stored as its difference to the count two places back; every value is written 5 bits at a time,
least significant first, as ``chr(48 + chunk)`` with bit 0x20 set when more chunks follow; the
last chunk's bit 0x10 is the sign.

No pycocotools needed; masks written here read back with ``pycocotools.mask.decode`` and
vice versa.
"""

from __future__ import annotations

import numpy as np


def _runs(mask) -> tuple[list, tuple]:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask to encode must be 2-D [H, W], got shape {array.shape}")
    binary = array > 0.5 if np.issubdtype(array.dtype, np.floating) else array != 0
    flat = binary.reshape(-1, order="F").astype(np.int8)
    if flat.size == 0:
        return [0], array.shape
    changes = np.flatnonzero(np.diff(flat)) + 1  # positions where the value flips
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:  # COCO starts with a run of zeros
        counts = [0] + counts
    return [int(c) for c in counts], array.shape


def counts_to_string(counts) -> str:
    """COCO's compact string for a list of run lengths."""
    out = []
    for index, value in enumerate(counts):
        x = int(value) - (int(counts[index - 2]) if index > 2 else 0)
        while True:
            chunk = x & 0x1F
            x >>= 5  # arithmetic shift, like C's on a signed long
            more = (x != -1) if (chunk & 0x10) else (x != 0)
            if more:
                chunk |= 0x20
            out.append(chr(chunk + 48))
            if not more:
                break
    return "".join(out)


def string_to_counts(text: str) -> list:
    """Run lengths of COCO's compact string (inverse of :func:`counts_to_string`)."""
    counts, pos = [], 0
    while pos < len(text):
        x, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("COCO RLE string ends in the middle of a count")
            chunk = ord(text[pos]) - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"COCO RLE string has a character {text[pos]!r} outside its alphabet")
            x |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos += 1
            shift += 5
            if not more and chunk & 0x10:
                x |= -1 << shift
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask) -> dict:
    """``{"size": [H, W], "counts": str}`` of a 2-D mask (nonzero / > 0.5 is foreground)."""
    counts, shape = _runs(mask)
    return {"size": [int(shape[0]), int(shape[1])], "counts": counts_to_string(counts)}


def decode(rle) -> np.ndarray:
    """uint8 ``[H, W]`` 0/1 mask of a COCO RLE dict (string or list counts)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("a COCO RLE mask is a dict with 'size' [H, W] and 'counts'")
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    counts = string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError("COCO RLE counts must not be negative")
    if sum(counts) != height * width:
        raise ValueError(f"COCO RLE counts cover {sum(counts)} pixels, the size {height}x{width} needs "
                         f"{height * width}")
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def area(rle) -> int:
    """Foreground pixel count of a COCO RLE dict."""
    counts = rle["counts"]
    counts = string_to_counts(counts) if isinstance(counts, str) else list(counts)
    return int(sum(counts[1::2]))


def bbox(mask) -> list:
    """``[x1, y1, x2, y2]`` pixel corners (exclusive x2/y2) of the foreground, or [0, 0, 0, 0] if empty."""
    array = np.asarray(mask) != 0
    ys, xs = np.nonzero(array)
    if xs.size == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
