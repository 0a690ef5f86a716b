"""PIE-Bench's run-length mask encoding, as a reusable codec.

PIE-Bench (cure-lab/PnPInversion, ``data/mapping_file.json``) stores each edit mask as a flat list
``[start_0, length_0, start_1, length_1, ...]``: every pair marks ``length`` consecutive ones that
begin at the absolute index ``start`` of the mask flattened in row-major (C) order, everything
else is zero. The reference decoder (``evaluation/evaluate.py::mask_decode``) assumes a 512x512
mask, clips a run that would overflow the array, and then **forces the one-pixel image border to
1** ("to avoid annotation errors in boundary"), so the border always counts as edited region and
never as background. :func:`rle_decode` keeps that quirk by default (``force_border=True``) so
background metrics are comparable with the published tables; pass ``force_border=False`` for the
mask exactly as annotated.

:func:`rle_encode` is the inverse for masks without a forced border: ``rle_decode(rle_encode(m),
m.shape, force_border=False) == m``. Data pipelines that write PIE-Bench-layout folders use it.
"""

from __future__ import annotations

import numpy as np

PIE_MASK_SHAPE = (512, 512)


def rle_encode(mask) -> list:
    """Runs of ones of a 2-D mask (anything > 0.5 is one) as PIE-Bench's ``[start, length, ...]``."""
    flat = np.asarray(mask, dtype=np.float64).reshape(-1) > 0.5
    if flat.size == 0:
        return []
    padded = np.concatenate(([False], flat, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))  # rising edges at even positions, falling at odd
    starts, ends = edges[0::2], edges[1::2]
    out = np.empty(2 * len(starts), dtype=np.int64)
    out[0::2], out[1::2] = starts, ends - starts
    return [int(v) for v in out]


def rle_decode(encoded, shape=PIE_MASK_SHAPE, force_border: bool = True) -> np.ndarray:
    """PIE-Bench's ``mask_decode``: a float32 [H, W] array of 0/1 (border forced to 1 by default)."""
    height, width = int(shape[0]), int(shape[1])
    length = height * width
    values = [int(v) for v in encoded]
    if len(values) % 2:
        raise ValueError(f"a PIE-Bench RLE mask has an even number of entries (start, length pairs); got {len(values)}")
    flat = np.zeros(length, dtype=np.float32)
    for i in range(0, len(values), 2):
        start, run = values[i], values[i + 1]
        if start < 0 or run < 0:
            raise ValueError(f"RLE pair {i // 2} has a negative start or length ({start}, {run})")
        flat[start:start + max(0, min(run, length - start))] = 1.0  # the reference clips overflowing runs
    mask = flat.reshape(height, width)
    if force_border:
        mask[0, :] = 1
        mask[-1, :] = 1
        mask[:, 0] = 1
        mask[:, -1] = 1
    return mask
