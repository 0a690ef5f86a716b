"""Shared setup of the tests/test_regions_*.py files (tiny encoders, images, the 4-sample dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from fixtures.tiny_models import (
    make_tiny_clip_vision,
    make_tiny_t5_encoder,
    write_test_image,
)
from fixtures.tiny_regions import edited_copy, make_tiny_clip_text

TINY_HEAD = {"d_model": 32, "num_heads": 2, "mlp_hidden": 32, "sem_hidden": 32}


def load_image(path) -> torch.Tensor:
    from PIL import Image

    array = np.array(Image.open(path).convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255.0)[None]


def tiny_model_paths(root) -> dict:
    clip = make_tiny_clip_vision(root)
    return {"clip_vision": clip.folder, "clip_vision_file": clip.single_file,
            "text_encoder": make_tiny_t5_encoder(root), "clip_text": make_tiny_clip_text(root)}


def tiny_encoders(root):
    from contextedit.nodes.regions.encoders import (
        ClipTextEncoder,
        ClipVisionEncoder,
        T5InstructionEncoder,
    )
    from contextedit.nodes.regions.objective import RegionEncoders

    paths = tiny_model_paths(root)
    return RegionEncoders(ClipVisionEncoder.load(paths["clip_vision"]),
                          T5InstructionEncoder.load(paths["text_encoder"]), ClipTextEncoder.load(paths["clip_text"]))


CAPTIONS = ("a red box and a blue disc", "remove the green ball from the table", "a cat on the red sofa",
            "the sky is blue")


def write_dataset(folder, with_edits: bool = True) -> Path:
    """4 samples: the test image at 4 sizes/colours; edited = red box repainted green."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, caption in enumerate(CAPTIONS):
        name = f"img{i}.png"
        write_test_image(folder / name, 64 + 8 * i, 64)
        record = {"image": name, "caption": caption}
        if with_edits:
            edited_copy(folder / name, folder / "edited" / name, color=(30, 200 - 30 * i, 40))
            record.update(instruction="make the red box green", target_caption=caption + " with a green box",
                          edited=f"edited/{name}")
        records.append(record)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


import pytest


@pytest.fixture(autouse=True)
def one_thread():
    """CI boxes are shared: a second torch thread makes these tiny models ~50x slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
