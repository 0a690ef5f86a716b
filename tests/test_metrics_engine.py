"""Edit metrics on constructed inputs with known answers, and against hand-written references.

Reference computations here are written from the benchmarks' definitions (PIE-Bench
``evaluation/matrics_calculator.py``, MagicBrush ``evaluation/image_eval.py``, the Emu Edit
paper), with plain numpy / direct module calls, never with the engine's helpers.
"""

import math

import numpy as np
import pytest
import torch
from contextedit.nodes.errors import InputError, ModelNotFoundError
from contextedit.nodes.metrics import suites
from contextedit.nodes.metrics.models import (
    MetricModels,
    clear_cache,
    folder_paths_for,
    locate,
)
from contextedit.nodes.metrics.rle import rle_decode, rle_encode
from fixtures.tiny_metrics import make_tiny_metric_models
from PIL import Image

CAPTION_SRC = "a cat on the red sofa"
CAPTION_TGT = "a dog on the red sofa"


@pytest.fixture(scope="module")
def models(generated_dir):
    return MetricModels.from_dirs([make_tiny_metric_models(generated_dir)])


def random_image(seed, h=64, w=80):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def box_mask(h=64, w=80):
    m = np.zeros((h, w), np.float32)
    m[10:30, 12:44] = 1
    return m


# ----------------------------------------------------------------------------- RLE codec


def reference_decode(encoded, h, w, border=True):
    """PIE-Bench's mask_decode, pair by pair, pixel by pixel."""
    flat = [0.0] * (h * w)
    for i in range(0, len(encoded), 2):
        for j in range(min(encoded[i + 1], h * w - encoded[i])):
            flat[encoded[i] + j] = 1.0
    mask = np.array(flat, np.float32).reshape(h, w)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    return mask


def test_rle_roundtrip_and_matches_the_reference_decoder():
    rng = np.random.default_rng(3)
    for trial in range(20):
        h, w = rng.integers(1, 40, 2)
        mask = (rng.random((h, w)) < rng.random()).astype(np.float32)
        encoded = rle_encode(mask)
        assert all(isinstance(v, int) for v in encoded)
        np.testing.assert_array_equal(rle_decode(encoded, (h, w), force_border=False), mask)
        np.testing.assert_array_equal(rle_decode(encoded, (h, w)), reference_decode(encoded, h, w))


def test_rle_known_encoding_and_overflow_clip():
    mask = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 1]], np.float32)
    assert rle_encode(mask) == [1, 3, 8, 1]  # runs start at flat index 1 (len 3: 1,2,3) and 8
    assert rle_encode(np.zeros((2, 2))) == []
    # a run past the end is clipped, as the reference does
    np.testing.assert_array_equal(rle_decode([2, 100], (2, 2), force_border=False), [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="even number"):
        rle_decode([1, 2, 3], (2, 2))


# ----------------------------------------------------------------------------- pixel metrics


def test_identical_images_give_the_ideal_values(models):
    src = random_image(0)
    pix = suites.compute("pixel", src, src)
    assert pix["psnr_bg"] == math.inf and pix["psnr_bg_only"] == math.inf
    assert pix["ssim_bg"] == pytest.approx(1.0, abs=1e-6)  # float32 SSIM of x with itself: (2mu^2+c1)/(2mu^2+c1)
    assert pix["mse_bg"] == 0.0 and pix["l1"] == 0.0
    pie = suites.compute("pie", src, src, models, mask=box_mask(), target_caption=CAPTION_TGT)
    assert pie["lpips_bg"] == 0.0  # equal features, bias-free linear heads: exactly zero
    assert pie["structure_distance"] == 0.0
    emu = suites.compute("emu", src, src, models, source_caption=CAPTION_SRC, target_caption=CAPTION_TGT)
    assert emu["l1"] == 0.0 and emu["clip_dir"] == 0.0  # no image change: no movement along the text direction
    assert emu["clip_img"] == pytest.approx(1.0, abs=1e-12)  # cos(x, x) in float64
    assert emu["dino"] == pytest.approx(1.0, abs=1e-12)
    mb = suites.compute("magicbrush", src, src, models, target_caption=CAPTION_TGT)
    assert mb["l1"] == 0.0 and mb["l2"] == 0.0
    assert mb["clip_i"] == pytest.approx(1.0, abs=1e-12) and mb["dino"] == pytest.approx(1.0, abs=1e-12)


def test_gaussian_noise_gives_the_analytic_psnr():
    rng = np.random.default_rng(7)
    sigma = 8.0  # in 8-bit steps; stays far from 0/255 clipping around mid-grey
    src = np.full((256, 256, 3), 128, np.uint8)
    edited = np.clip(np.round(128 + rng.normal(0, sigma, src.shape)), 0, 255).astype(np.uint8)
    # E[MSE] = sigma^2 + 1/12 (rounding to the nearest step adds uniform error of variance 1/12)
    expected = 10 * math.log10(255.0 ** 2 / (sigma ** 2 + 1 / 12))
    value = suites.compute("pixel", src, edited)["psnr_bg"]
    # 196608 squared errors: the sample MSE has relative std sqrt(2/N) = 0.32 %, i.e. 0.014 dB;
    # 0.05 dB is ~3.5 standard deviations
    assert value == pytest.approx(expected, abs=0.05)


def test_pie_background_quirk_and_background_only_values():
    src, edited = random_image(1), random_image(2)
    mask = box_mask()
    keep = 1 - mask
    out = suites.compute("pixel", src, edited, mask=mask)
    a, b = src / 255.0 * keep[..., None], edited / 255.0 * keep[..., None]
    whole_frame_mse = ((a - b) ** 2).mean()  # PIE-Bench: both x (1-mask), mean over the whole frame
    assert out["mse_bg"] == pytest.approx(whole_frame_mse, rel=1e-5)  # float32 vs float64 mean of 15k terms
    assert out["psnr_bg"] == pytest.approx(10 * math.log10(1 / whole_frame_mse), abs=1e-4)
    bg = keep.astype(bool)
    bg_mse = (((src / 255.0 - edited / 255.0) ** 2)[bg]).mean()
    assert out["psnr_bg_only"] == pytest.approx(10 * math.log10(1 / bg_mse), abs=1e-9)  # both float64
    # the quirk inflates PSNR by exactly 10 log10(H*W / background pixels)
    assert out["psnr_bg"] - out["psnr_bg_only"] == pytest.approx(10 * math.log10(mask.size / bg.sum()), abs=1e-4)


def test_changes_inside_the_mask_do_not_move_background_metrics(models):
    src, edited = random_image(3), random_image(4)
    mask = box_mask()
    other = edited.copy()
    other[mask > 0] = random_image(5)[mask > 0]  # a different edit inside the mask only
    a = suites.compute("pie", src, edited, models, mask=mask, target_caption=CAPTION_TGT)
    b = suites.compute("pie", src, other, models, mask=mask, target_caption=CAPTION_TGT)
    for key in ("psnr_bg", "lpips_bg", "mse_bg", "ssim_bg", "psnr_bg_only", "mse_bg_only"):
        assert a[key] == b[key], key  # identical inputs after masking: bit-identical
    assert a["structure_distance"] != b["structure_distance"]  # whole-image metric does see the edit
    # and a change outside the mask does move them
    moved = edited.copy()
    moved[0:5, 50:70] = 255 - moved[0:5, 50:70]
    c = suites.compute("pie", src, moved, models, mask=mask, target_caption=CAPTION_TGT)
    assert c["psnr_bg"] != a["psnr_bg"] and c["lpips_bg"] != a["lpips_bg"]


def test_full_mask_gives_nan_background_and_empty_mask_nan_edited_clip(models):
    src, edited = random_image(6), random_image(7)
    full = np.ones((64, 80), np.float32)
    out = suites.compute("pie", src, edited, models, mask=full, target_caption=CAPTION_TGT)
    assert math.isnan(out["psnr_bg"]) and math.isnan(out["lpips_bg"])
    out = suites.compute("pie", src, edited, models, mask=None, target_caption=CAPTION_TGT)
    assert math.isnan(out["clip_edited"]) and math.isfinite(out["psnr_bg"])


def test_psnr_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    for seed in range(3):
        src, edited = random_image(10 + seed, 48, 56), random_image(20 + seed, 48, 56)
        edited = np.clip(src.astype(int) + (edited.astype(int) - 128) // 4, 0, 255).astype(np.uint8)
        out = suites.compute("pixel", src, edited)
        a, b = src / 255.0, edited / 255.0
        # float32 (torchmetrics) vs float64 (scikit-image) mean of ~8k squared errors
        assert out["psnr_bg"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)
        ref = structural_similarity(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        # same 11-tap Gaussian (radius 5) and cropped border; float32 convolutions vs float64 filters
        assert out["ssim_bg"] == pytest.approx(ref, abs=1e-4)


# ----------------------------------------------------------------------------- networks by hand


def _clip_by_hand(folder, image_u8, text, ip2p=False):
    """OpenAI CLIP preprocess on a square image (resize to 32, PIL bicubic; crop is then the identity),
    or InstructPix2Pix's (``ip2p``: F.interpolate of the [0, 1] image to 32 x 32, bicubic, no antialias),
    and the transformers API's get_*_features, cosine in numpy."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if ip2p:
        t = torch.from_numpy(image_u8.astype(np.float32) / 255).permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(t, size=32, mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    else:
        x = np.asarray(Image.fromarray(image_u8).resize((32, 32), Image.BICUBIC), np.float32) / 255.0
    x = (x - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    pixels = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        ids = tok([text], return_tensors="pt")
        txt = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    return img[0].double().numpy(), txt[0].double().numpy()


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_clip_metrics_equal_the_formulas_by_hand(models, generated_dir):
    root = make_tiny_metric_models(generated_dir)
    large = str(root / "clip-vit-large-patch14")
    captions = [CAPTION_TGT, CAPTION_SRC, "a photo", "make the sky blue", "the green ball"]
    seen_positive = False
    for seed in range(4):
        src, edited = random_image(30 + seed, 48, 48), random_image(40 + seed, 48, 48)
        i_src, t_src = _clip_by_hand(large, src, CAPTION_SRC, ip2p=True)  # Emu Edit set: IP2P preprocessing
        for caption in captions:
            i_edt_crop, t_edt = _clip_by_hand(large, edited, caption)
            cos = _cos(i_edt_crop, t_edt)
            seen_positive |= cos > 0
            pie = suites.compute("pie", src, edited, models, target_caption=caption)
            # float32 networks, one bicubic resize each: 1e-4 of a 0..100 score
            assert pie["clip_whole"] == pytest.approx(max(100 * cos, 0.0), abs=1e-3)
            i_edt, _ = _clip_by_hand(large, edited, caption, ip2p=True)
            emu = suites.compute("emu", src, edited, models, source_caption=CAPTION_SRC, target_caption=caption)
            # cosines of float32 embeddings (16 dims): agree to ~1e-6; 1e-5 leaves room for the resize
            assert emu["clip_out"] == pytest.approx(_cos(i_edt, t_edt), abs=1e-5)
            assert emu["clip_img"] == pytest.approx(_cos(i_src, i_edt), abs=1e-5)
            if caption == CAPTION_SRC:
                assert emu["clip_dir"] == 0.0  # no text direction: cosine with a zero vector is 0
            else:
                # difference vectors of float32 embeddings lose a few digits: 1e-4
                assert emu["clip_dir"] == pytest.approx(_cos(i_edt - i_src, t_edt - t_src), abs=1e-4)
    assert seen_positive, "no positive image-text cosine among the cases: CLIPScore's clamp path alone was tested"
    # MagicBrush uses the ViT-B/32 folder, against the reference image
    base = str(root / "clip-vit-base-patch32")
    gen, gt = random_image(50, 48, 48), random_image(51, 48, 48)
    i_gen, t_gt = _clip_by_hand(base, gen, CAPTION_TGT)
    i_gt, _ = _clip_by_hand(base, gt, CAPTION_TGT)
    mb = suites.compute("magicbrush", random_image(52, 48, 48), gen, models, reference=gt, target_caption=CAPTION_TGT)
    # cosines of float32 embeddings, same model and inputs as above: ~1e-6 apart; 1e-5 absolute
    assert mb["clip_i"] == pytest.approx(_cos(i_gen, i_gt), abs=1e-5)
    assert mb["clip_t"] == pytest.approx(_cos(i_gen, t_gt), abs=1e-5)
    assert mb["l1"] == pytest.approx(np.abs(gen / 255.0 - gt / 255.0).mean(), rel=1e-5)  # float32 mean
    assert mb["l2"] == pytest.approx(((gen / 255.0 - gt / 255.0) ** 2).mean(), rel=1e-5)


def _vit(state_path):
    """The tiny DINO file loaded straight into a timm ViT (our loader not involved)."""
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    if str(state_path).endswith(".safetensors"):
        state = load_file(str(state_path))
    else:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    width = state["patch_embed.proj.weight"].shape[0]
    patch = state["patch_embed.proj.weight"].shape[-1]
    model = VisionTransformer(img_size=224, patch_size=patch, embed_dim=width, depth=2, num_heads=max(1, width // 64),
                              num_classes=0).eval()
    model.load_state_dict(state)
    return model


def test_structure_distance_equals_the_definition_by_hand(models, generated_dir):
    model = _vit(make_tiny_metric_models(generated_dir) / "dino_vitb8.safetensors")
    width = 128

    def self_similarity(image_u8):
        # 0..255 floats (PIE-Bench quirk), bilinear resize to 224 without antialias, ImageNet normalisation
        x = torch.from_numpy(image_u8.astype(np.float32)).permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        captured = {}
        block = model.blocks[-1]
        hook = block.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
        with torch.no_grad():
            model(x)
        hook.remove()
        with torch.no_grad():
            tokens = block.norm1(captured["x"])[0]                 # [785, 128]
            qkv = tokens @ block.attn.qkv.weight.T + block.attn.qkv.bias
        keys = qkv[:, width:2 * width].double().numpy()           # DINO's layout: [q | k | v], heads contiguous
        assert keys.shape == (785, width)  # 28 x 28 patches + CLS, 2 heads x 64
        norms = np.linalg.norm(keys, axis=1)
        return (keys @ keys.T) / np.maximum(np.outer(norms, norms), 1e-8)

    src, edited = random_image(60, 256, 256), random_image(61, 256, 256)
    expected = float(((self_similarity(edited) - self_similarity(src)) ** 2).mean())
    value = suites.compute("pie", src, edited, models, target_caption=CAPTION_TGT)["structure_distance"]
    assert expected > 0
    # float32 network and cosines, mean of 616k squared differences: 1e-4 relative
    assert value == pytest.approx(expected, rel=1e-4)


def test_dino_similarity_equals_the_cls_cosine_by_hand(models, generated_dir):
    model = _vit(make_tiny_metric_models(generated_dir) / "dino_deitsmall16_pretrain.pth")

    def cls(image_u8):
        pil = Image.fromarray(image_u8).resize((256, 256), Image.BICUBIC)   # short side 256 (square input)
        x = np.asarray(pil, np.float32)[16:240, 16:240] / 255.0           # centre crop 224
        x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        with torch.no_grad():
            return model(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None])[0].double().numpy()

    src, edited = random_image(70, 96, 96), random_image(71, 96, 96)
    value = suites.compute("emu", src, edited, models, source_caption=CAPTION_SRC, target_caption=CAPTION_TGT)["dino"]
    # float32 features (64 dims) then a float64 cosine; torchvision's PIL resize is PIL's
    assert value == pytest.approx(_cos(cls(src), cls(edited)), abs=1e-5)


def test_lpips_loads_backbone_and_heads_from_the_files(models, generated_dir):
    root = make_tiny_metric_models(generated_dir)
    net = models.get("lpips")
    backbone = torch.load(root / "squeezenet1_1-b8a52dc0.pth", weights_only=True)
    heads = torch.load(root / "lpips_squeeze.pth", weights_only=True)
    params = dict(net.named_parameters())
    assert torch.equal(params["net.slices.0.0.weight"], backbone["features.0.weight"])    # first conv
    assert torch.equal(params["net.slices.6.12.expand3x3.weight"], backbone["features.12.expand3x3.weight"])
    assert torch.equal(params["lin6.model.1.weight"], heads["lin6.model.1.weight"])
    src, edited = random_image(80), random_image(81)
    d = suites.compute("pie", src, edited, models, target_caption=CAPTION_TGT)["lpips_bg"]
    d_rev = suites.compute("pie", edited, src, models, target_caption=CAPTION_TGT)["lpips_bg"]
    assert d > 0 and d == pytest.approx(d_rev, rel=1e-6)  # symmetric up to float32 summation order


# ----------------------------------------------------------------------------- errors


def test_missing_network_names_the_files_and_the_folder(tmp_path):
    clear_cache()
    with pytest.raises(ModelNotFoundError) as info:
        MetricModels.from_dirs([tmp_path]).get("dino_b8")
    message = str(info.value)
    assert "dino_vitb8.safetensors" in message and "dino_vitbase8_pretrain.pth" in message
    assert str(tmp_path) in message and "DINO ViT-B/8" in message
    with pytest.raises(ModelNotFoundError, match="clip-vit-large-patch14"):
        locate("clip_l14", folder_paths_for([tmp_path]))
    with pytest.raises(ModelNotFoundError, match="squeezenet1_1-b8a52dc0.pth"):
        suites.compute("pie", random_image(0), random_image(1), MetricModels.from_dirs([tmp_path]),
                       target_caption=CAPTION_TGT)


def test_bad_inputs_name_the_input(models):
    with pytest.raises(InputError, match="target_caption"):
        suites.compute("pie", random_image(0), random_image(1), models, target_caption="  ")
    with pytest.raises(InputError, match="source_caption"):
        suites.compute("emu", random_image(0), random_image(1), models, target_caption=CAPTION_TGT)
    with pytest.raises(InputError, match="metric_set"):
        suites.compute("nope", random_image(0), random_image(1))
    with pytest.raises(InputError, match="source"):
        suites.compute("pixel", np.zeros((4, 4, 5)), random_image(1))


def test_non_square_images_and_other_sizes(models):
    src = random_image(90, 48, 64)
    out = suites.compute("pie", src, random_image(91, 48, 64), models, mask=box_mask(48, 64),
                         target_caption=CAPTION_TGT)
    assert all(math.isfinite(out[k]) for k in ("structure_distance", "psnr_bg", "lpips_bg", "clip_whole"))
    assert out["structure_distance"] > 0
    # another size: the Emu Edit set resizes it to the source, PIE-Bench refuses it (see test_metrics_protocols)
    emu = suites.compute("emu", src, random_image(92, 40, 50), models, source_caption=CAPTION_SRC,
                         target_caption=CAPTION_TGT)
    assert math.isfinite(emu["l1"]) and math.isfinite(emu["clip_dir"])
    with pytest.raises(InputError, match="edited"):
        suites.compute("pie", src, random_image(93, 40, 50), models, target_caption=CAPTION_TGT)


def test_metrics_folder_is_registered_additively():
    from types import SimpleNamespace

    from contextedit.nodes.model_folders import register_model_folders

    fp = SimpleNamespace(models_dir="/m", folder_names_and_paths={"metrics": (["/user/metrics"], set())})
    register_model_folders(fp)
    assert fp.folder_names_and_paths["metrics"][0] == ["/user/metrics", "/m/metrics"]
