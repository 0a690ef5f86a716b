"""COCO RLE codec (nodes/masks/rle.py) against the format as pycocotools' maskApi.c defines it."""

import numpy as np
import pytest
from contextedit.nodes.masks import rle


def reference_counts(mask):
    """Run lengths written from the COCO format description: walk the pixels column by column
    (Fortran order), first run counts zeros."""
    height, width = len(mask), len(mask[0])
    counts, current, run = [], 0, 0
    for x in range(width):
        for y in range(height):
            value = 1 if mask[y][x] else 0
            if value == current:
                run += 1
            else:
                counts.append(run)
                current, run = value, 1
    counts.append(run)
    return counts


def test_counts_follow_column_major_order_starting_with_zeros():
    mask = np.array([[0, 1, 1],
                     [1, 1, 0]], dtype=np.uint8)
    # columns: (0,1) (1,1) (1,0) -> 0 1 1 1 1 0 -> runs 1 zero, 4 ones, 1 zero
    assert rle.string_to_counts(rle.encode(mask)["counts"]) == [1, 4, 1]
    full = np.ones((2, 2), dtype=np.uint8)
    assert rle.string_to_counts(rle.encode(full)["counts"]) == [0, 4]  # leading empty zero run


def test_string_encoding_matches_hand_derived_values():
    # maskApi.c rleToString by hand: counts 0..2 are written as they are ('5', '3', '2'); from
    # index 3 on (``if (i > 2)``) the count minus the one two places back: 1 - 3 = -2;
    # -2 & 31 = 30 -> chr(48 + 30) = 'N'; -2 >> 5 = -1 with bit 0x10 set, so it ends there.
    assert rle.counts_to_string([5, 3, 2, 1]) == "532N"
    assert rle.counts_to_string([5, 3, 2, 6]) == "5323"  # 6 - 3 = 3
    # 100 = 0b11_00100: low chunk 4 with the continue bit (4|32 -> chr(84) 'T'), then 3 -> '3'
    assert rle.counts_to_string([100]) == "T3"
    assert rle.string_to_counts("532N") == [5, 3, 2, 1]
    assert rle.string_to_counts("5323") == [5, 3, 2, 6]
    assert rle.string_to_counts("T3") == [100]


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48), (33, 130)])
def test_round_trip_of_random_masks_and_reference_runs(shape):
    gen = np.random.default_rng(shape[0] * 1000 + shape[1])
    for density in (0.0, 0.1, 0.5, 0.97, 1.0):
        mask = (gen.random(shape) < density).astype(np.uint8)
        encoded = rle.encode(mask)
        assert encoded["size"] == [shape[0], shape[1]] and isinstance(encoded["counts"], str)
        assert rle.string_to_counts(encoded["counts"]) == reference_counts(mask.tolist())
        back = rle.decode(encoded)
        assert back.dtype == np.uint8 and np.array_equal(back, mask)
        assert rle.area(encoded) == int(mask.sum())
        # uncompressed (list) counts decode to the same mask
        assert np.array_equal(rle.decode({"size": list(shape), "counts": reference_counts(mask.tolist())}), mask)


def test_float_masks_threshold_at_half_and_bbox():
    mask = np.zeros((10, 12), dtype=np.float32)
    mask[2:5, 3:9] = 0.9
    mask[7, 0] = 0.4  # below 0.5: background
    back = rle.decode(rle.encode(mask))
    assert back.sum() == 18 and back[7, 0] == 0
    assert rle.bbox(back) == [3, 2, 9, 5]
    assert rle.bbox(np.zeros((3, 3))) == [0, 0, 0, 0]


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="cover"):
        rle.decode({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="alphabet"):
        rle.decode({"size": [2, 2], "counts": "\x01"})
    with pytest.raises(ValueError, match="'size'"):
        rle.decode([1, 2])
