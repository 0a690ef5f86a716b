"""Metric protocols pinned to the official code (issue 22 §5): SSIM as PIE-Bench's torchmetrics
computed it, PIE-Bench's crop of a non-square result, InstructPix2Pix's CLIP preprocessing for the
Emu Edit set, and reference rows labelled with their dataset, backbone and preprocessing.

Every reference value here is written from the official code (cure-lab/PnPInversion
``evaluation/``, timothybrooks/instruct-pix2pix ``metrics/clip_similarity.py``) or the SSIM
definition, with plain loops / direct library calls, never with the engine's helpers.
"""

import math

import numpy as np
import pytest
import torch
from contextedit.nodes.errors import InputError
from contextedit.nodes.metrics import suites
from contextedit.nodes.metrics.models import MetricModels
from fixtures.tiny_metrics import make_tiny_metric_models
from PIL import Image

CAPTION_SRC = "a cat on the red sofa"
CAPTION_TGT = "a dog on the red sofa"


@pytest.fixture(scope="module")
def models(generated_dir):
    return MetricModels.from_dirs([make_tiny_metric_models(generated_dir)])


def random_image(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- SSIM


def ssim_by_loops(a, b):
    """SSIM of two [H, W, C] float arrays in [0, 1] as PIE-Bench's torchmetrics (before 1.5) computed it:
    11-tap Gaussian window (sigma 1.5, taps at -5..5, normalised), population (weighted) moments,
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, the map averaged over the positions whose window lies
    inside the image (the reflect-padded 5-pixel border dropped), every channel alike. float64 loops."""
    taps = [math.exp(-((t - 5) / 1.5) ** 2 / 2) for t in range(11)]
    total = sum(taps)
    g = [t / total for t in taps]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    h, w, channels = a.shape
    values = []
    for c in range(channels):
        for i in range(5, h - 5):
            for j in range(5, w - 5):
                mx = my = sxx = syy = sxy = 0.0
                for u in range(11):
                    for v in range(11):
                        weight = g[u] * g[v]
                        x, y = float(a[i - 5 + u, j - 5 + v, c]), float(b[i - 5 + u, j - 5 + v, c])
                        mx += weight * x
                        my += weight * y
                        sxx += weight * x * x
                        syy += weight * y * y
                        sxy += weight * x * y
                vx, vy, cxy = sxx - mx * mx, syy - my * my, sxy - mx * my
                values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return sum(values) / len(values)


def test_ssim_equals_the_protocol_value_whatever_torchmetrics_is_installed(monkeypatch):
    src = random_image(1, 16, 19)
    edited = np.clip(src.astype(int) + np.random.default_rng(2).integers(-40, 41, src.shape), 0, 255).astype(np.uint8)
    expected = ssim_by_loops(src / 255.0, edited / 255.0)
    # torchmetrics >= 1.5 averages the padded border too: on this small image that is far from the protocol
    from torchmetrics.functional.image import structural_similarity_index_measure

    to_tensor = lambda x: torch.from_numpy(x.astype(np.float32) / 255).permute(2, 0, 1)[None]
    padded_mean = float(structural_similarity_index_measure(to_tensor(src), to_tensor(edited), data_range=1.0))
    assert abs(padded_mean - expected) > 1e-3
    # our value may not depend on which torchmetrics release computes SSIM: it must not call it
    import torchmetrics.functional.image as tm_image

    def refuse(*_args, **_kwargs):
        raise AssertionError("SSIM must not depend on torchmetrics' SSIM (its border handling changed in 1.5)")

    monkeypatch.setattr(tm_image, "structural_similarity_index_measure", refuse)
    value = suites.compute("pixel", src, edited)["ssim_bg"]
    # float32 convolutions of 121 taps vs float64 loops: ~1e-7 per position; 1e-5 bounds the mean
    assert value == pytest.approx(expected, abs=1e-5)
    # two flat images: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    flat_a, flat_b = np.full((20, 24, 3), 128, np.uint8), np.full((20, 24, 3), 64, np.uint8)
    a, b, c1 = 128 / 255, 64 / 255, 0.01 ** 2
    # float32 E[x^2] - mu^2 of a flat image leaves ~1e-8 of spurious variance against C2 = 9e-4
    # (the protocol's float32 code has it too): 1e-5 relative
    assert suites.compute("pixel", flat_a, flat_b)["ssim_bg"] == pytest.approx(
        (2 * a * b + c1) / (a * a + b * b + c1), rel=2e-5)


# ----------------------------------------------------------------------------- PIE-Bench crop


def pie_mse_bg(src_u8, edited_u8, mask):
    """matrics_calculator.calculate_mse with masks: both images / 255 times (1 - mask), mean over all."""
    keep = (1 - mask)[..., None]
    return float((((src_u8 / 255.0) * keep - (edited_u8 / 255.0) * keep) ** 2).mean())


@pytest.mark.parametrize("layout", ["wide", "tall"])
def test_pie_crops_a_non_square_result_to_its_bottom_right_panel(layout):
    size = 40
    src = random_image(10, size, size)
    panel = np.clip(src.astype(int) + np.random.default_rng(11).integers(-30, 31, src.shape), 0, 255).astype(np.uint8)
    other = random_image(12, size, size)  # e.g. the reconstruction panel of a side-by-side result
    strip = np.concatenate([other, panel], axis=1 if layout == "wide" else 0)
    pil = Image.fromarray(strip)
    # evaluate.py: if w != h: tgt.crop((w - 512, h - 512, w, h)) with 512 the (square) source size
    w, h = pil.size
    cropped = np.asarray(pil.crop((w - size, h - size, w, h)))
    assert np.array_equal(cropped, panel)
    mask = np.zeros((size, size), np.float32)
    mask[8:20, 10:30] = 1
    out = suites.compute("pixel", src, strip, mask=mask)
    # float32 mean (torchmetrics) vs float64 numpy over 4.8k terms
    assert out["mse_bg"] == pytest.approx(pie_mse_bg(src, cropped, mask), rel=1e-5)
    assert out["l1"] == pytest.approx(np.abs(src / 255.0 - cropped / 255.0).mean(), rel=1e-5)


def test_pie_refuses_a_result_the_script_cannot_compare():
    src = random_image(20, 32, 32)
    # a square result of another size: evaluate.py does not crop it and asserts equal shapes
    with pytest.raises(InputError, match="edited") as info:
        suites.compute("pixel", src, random_image(21, 64, 64))
    assert "bottom-right" in str(info.value) and "32x32" in str(info.value)
    # a non-square result smaller than the source: PIL's crop would pad it with black; refused
    with pytest.raises(InputError, match="edited"):
        suites.compute("pixel", src, random_image(22, 24, 48))


# ----------------------------------------------------------------------------- Emu Edit CLIP preprocessing


def ip2p_clip(folder, images_u8, texts):
    """InstructPix2Pix metrics/clip_similarity.py: images in [0, 1], F.interpolate to (S, S) bicubic
    (align_corners=False, no crop), OpenAI mean/std; features of the projection heads."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    size = model.config.vision_config.image_size  # 224 for ViT-L/14; 32 for the tiny test model
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    feats = []
    with torch.no_grad():
        for image in images_u8:
            x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
            x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
            out = model.get_image_features(pixel_values=(x - mean) / std)
            feats.append(getattr(out, "pooler_output", out)[0].double().numpy())
        for text in texts:
            ids = tok([text], return_tensors="pt")
            out = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
            feats.append(getattr(out, "pooler_output", out)[0].double().numpy())
    return feats


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_emu_set_uses_instructpix2pix_clip_preprocessing_by_default(models, generated_dir):
    folder = str(make_tiny_metric_models(generated_dir) / "clip-vit-large-patch14")
    # non-square: squashing to S x S (InstructPix2Pix) and a centre crop see different pixels
    src, edited = random_image(30, 40, 96), random_image(31, 40, 96)
    i_src, i_edt, t_src, t_tgt = ip2p_clip(folder, [src, edited], [CAPTION_SRC, CAPTION_TGT])
    out = suites.compute("emu", src, edited, models, source_caption=CAPTION_SRC, target_caption=CAPTION_TGT)
    # cosines of float32 embeddings (16 dims), same model and ops: agree to ~1e-6
    assert out["clip_img"] == pytest.approx(_cos(i_src, i_edt), abs=1e-5)
    assert out["clip_out"] == pytest.approx(_cos(i_edt, t_tgt), abs=1e-5)
    # difference vectors of float32 embeddings lose a few digits: 1e-4
    assert out["clip_dir"] == pytest.approx(_cos(i_edt - i_src, t_tgt - t_src), abs=1e-4)


def test_emu_centre_crop_variant_uses_openai_clip_preprocessing(models, generated_dir):
    from transformers import CLIPModel

    folder = str(make_tiny_metric_models(generated_dir) / "clip-vit-large-patch14")
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    src, edited = random_image(32, 40, 96), random_image(33, 40, 96)

    def openai_features(image_u8):
        # clip.load's preprocess: Resize(32, bicubic) of the short side, CenterCrop(32), ToTensor, normalise
        pil = Image.fromarray(image_u8)
        w, h = pil.size
        pil = pil.resize((int(32 * w / h), 32), Image.BICUBIC)  # torchvision: int(short * long / short)
        left = round((pil.size[0] - 32) / 2.0)  # torchvision: int(round((w - 32) / 2))
        x = np.asarray(pil.crop((left, 0, left + 32, 32)), np.float32) / 255.0
        x = (x - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
        with torch.no_grad():
            out = model.get_image_features(pixel_values=torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None])
        return getattr(out, "pooler_output", out)[0].double().numpy()

    out = suites.compute("emu_crop", src, edited, models, source_caption=CAPTION_SRC, target_caption=CAPTION_TGT)
    # float32 embeddings (16 dims); torchvision's PIL resize is PIL's: ~1e-6 apart
    assert out["clip_img"] == pytest.approx(_cos(openai_features(src), openai_features(edited)), abs=1e-5)
    default = suites.compute("emu", src, edited, models, source_caption=CAPTION_SRC, target_caption=CAPTION_TGT)
    assert default["clip_img"] != out["clip_img"]  # the two preprocessings really differ on this input


# ----------------------------------------------------------------------------- labelled references


def test_every_reference_row_names_its_dataset_backbone_and_preprocessing():
    from contextedit.nodes.metrics.references import DATASETS, REFERENCES
    from contextedit.nodes.metrics.report import to_table

    for suite, rows in REFERENCES.items():
        assert rows, suite
        for row in rows:
            assert row.dataset in DATASETS and row.source.strip() and row.protocol.strip(), row
            assert set(row.values) <= {m.key for m in suites.suite_metrics(suite)}, row
    emu_rows = {row.method: row for row in REFERENCES["emu"]}
    assert "ViT-L/14" in emu_rows["Emu Edit"].protocol
    table = to_table({suite: {} for suite in REFERENCES})
    for rows in REFERENCES.values():
        for row in rows:
            assert row.protocol in table and DATASETS[row.dataset] in table, row.method
