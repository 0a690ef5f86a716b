"""The tiny-model factories write folders that the standard loaders reload and run.

Each test goes through the loader real users' files go through (diffusers / transformers
from_pretrained with local_files_only, segment-anything's builder + a strict load_state_dict), so a
factory that writes a wrong layout, mismatched ids or non-deterministic weights fails here rather
than in a model test further up.
"""

import functools
import json
import os

import numpy as np
import pytest
import torch
from fixtures import tiny_models as tm
from PIL import Image
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def image_path(generated_dir):
    return tm.write_test_image(generated_dir / "test_image_64x48.png", 64, 48)


def _assert_state_dicts_equal(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def test_fixtures_force_offline_hub():
    from huggingface_hub import constants

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert constants.HF_HUB_OFFLINE is True and constants.is_offline_mode()


def test_write_test_image_is_deterministic(tmp_path):
    a = tm.write_test_image(tmp_path / "a.png", 40, 30)
    b = tm.write_test_image(tmp_path / "b.png", 40, 30)
    assert a.read_bytes() == b.read_bytes()
    pixels = np.asarray(Image.open(a))
    assert pixels.shape == (30, 40, 3)
    assert tuple(pixels[15, 10]) == (220, 30, 30)  # inside the red box
    assert tuple(pixels[16, 29]) == (30, 60, 220)  # centre of the blue disc
    assert tuple(pixels[1, 1]) == (128, 128, 128)  # background


# --------------------------------------------------------------------------- diffusers


def test_diffusers_sd_folder_loads_and_runs(generated_dir, image_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    path = tm.make_tiny_diffusers_sd(generated_dir)
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (path / sub).is_dir(), sub
    assert sorted(os.listdir(path / "tokenizer")) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]

    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.vae_scale_factor == 8

    # reloaded UNet == the same factory's in-memory UNet: saved faithfully, and deterministic
    expected = tm.make_tiny_unet("tiny", layers_per_block=2, sample_size=8)
    _assert_state_dicts_equal(pipe.unet.state_dict(), expected.state_dict())

    tokenizer = pipe.tokenizer
    ids = tokenizer("Replace the cat on the red sofa").input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[:3] == ["<|startoftext|>", "replace</w>", "the</w>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "replace the cat on the red sofa"

    with torch.no_grad():
        tokens = tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        text = pipe.text_encoder(tokens).last_hidden_state
        assert text.shape == (1, 77, 32)
        image = torch.from_numpy(np.array(Image.open(image_path).resize((64, 64)))).permute(2, 0, 1)
        image = image[None].float() / 127.5 - 1
        latent = pipe.vae.encode(image).latent_dist.mode()
        assert latent.shape == (1, 4, 8, 8)
        assert pipe.vae.decode(latent).sample.shape == (1, 3, 64, 64)
        eps = pipe.unet(latent, 500, encoder_hidden_states=text).sample
        assert eps.shape == latent.shape and torch.isfinite(eps).all()
        out = pipe("a cat", num_inference_steps=2, guidance_scale=2.0, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3)


def _cross_attention_resolutions(unet, latent_size, **forward_kwargs):
    """Side length of the feature map each cross-attention (attn2) call sees, in call order."""
    seen = []
    hooks = [
        module.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True)
        for name, module in unet.named_modules() if name.endswith("attn2")
    ]
    try:
        with torch.no_grad():
            x = torch.randn(1, unet.config.in_channels, latent_size, latent_size)
            context = torch.randn(1, 5, unet.config.cross_attention_dim)
            out = unet(x, 10, encoder_hidden_states=context, **forward_kwargs).sample
    finally:
        for hook in hooks:
            hook.remove()
    assert out.shape == (1, 4, latent_size, latent_size)
    return [round(n ** 0.5) for n in seen]


def test_tiny_unet_sd15_layout_runs_attention_where_sd15_does():
    unet = tm.make_tiny_unet("sd15")
    # down 16, 8, 4 (one layer each) | mid 2 | up: 3 res blocks per level at 4, 8, 16 -> 2 each
    # (layers_per_block=1 -> 2 up res blocks)
    assert _cross_attention_resolutions(unet, 16) == [16, 8, 4, 2, 4, 4, 8, 8, 16, 16]
    deeper = tm.make_tiny_unet("sd15", layers_per_block=2, in_channels=8)
    assert deeper.conv_in.in_channels == 8
    assert _cross_attention_resolutions(deeper, 16) == [16, 16, 8, 8, 4, 4, 2] + [4] * 3 + [8] * 3 + [16] * 3


def test_tiny_unet_sdxl_layout_has_no_attention_at_full_resolution():
    unet = tm.make_tiny_unet("sdxl")
    # down: 8 x1 layer, 4 x2 layers | mid 4 x2 | up: 2 res blocks at 4 (x2 layers), 2 at 8 (x1)
    assert _cross_attention_resolutions(unet, 16) == [8, 4, 4, 4, 4] + [4] * 4 + [8] * 2
    with_time = tm.make_tiny_unet("sdxl", sdxl_text_time=True)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}
    assert 16 not in _cross_attention_resolutions(with_time, 16, added_cond_kwargs=added)


def test_tiny_unet_is_deterministic_and_rejects_unknown_layouts():
    _assert_state_dicts_equal(tm.make_tiny_unet("sdxl").state_dict(), tm.make_tiny_unet("sdxl").state_dict())
    assert not torch.equal(tm.make_tiny_unet("sd15", seed=1).conv_in.weight, tm.make_tiny_unet("sd15").conv_in.weight)
    with pytest.raises(ValueError):
        tm.make_tiny_unet("sd3")


# --------------------------------------------------------------------------- Qwen2-VL


@pytest.mark.parametrize("family,layout", [("qwen2_vl", "transformers"), ("qwen2_5_vl", "transformers"),
                                           ("qwen2_vl", "hub")])
def test_qwen_vl_folder_loads_and_generates(generated_dir, image_path, family, layout):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tm.make_tiny_qwen2_vl(generated_dir, family, layout=layout)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    assert model.config.model_type == family
    assert type(processor).__name__ == {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[family]

    tokenizer = processor.tokenizer
    text = "Replace the cat on the red sofa."
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    for token in tm.QWEN_SPECIAL_TOKENS:
        assert len(tokenizer(token).input_ids) == 1, token
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")

    # On disk the weights use the hub's checkpoint names (model.layers..., visual...); transformers 5
    # renames them on load (model.language_model.layers..., model.visual...).
    saved = load_file(path / "model.safetensors")
    state = model.state_dict()
    renamed = {("model.language_model." + k[len("model."):] if k.startswith("model.") else "model." + k): v
               for k, v in saved.items()}
    assert renamed.keys() == state.keys() - {"lm_head.weight"}  # lm_head is tied to embed_tokens
    for key, value in renamed.items():
        assert torch.equal(state[key], value), key
    assert torch.equal(state["lm_head.weight"], state["model.language_model.embed_tokens.weight"])

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is the edit executable?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|vision_start|><|image_pad|><|vision_end|>" in prompt
    inputs = processor(text=[prompt], images=[Image.open(image_path)], return_tensors="pt")
    grid = inputs["image_grid_thw"][0]
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == int(grid.prod()) // 4 and 4 <= n_image_tokens <= 16
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape == (1, prompt_len + 6)
    assert torch.equal(out[0, :prompt_len], inputs["input_ids"][0])
    assert isinstance(processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)[0], str)


def test_qwen_vl_factory_is_deterministic_and_idempotent(tmp_path):
    a = tm.make_tiny_qwen2_vl(tmp_path / "a")
    b = tm.make_tiny_qwen2_vl(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name

    weights = a / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert tm.make_tiny_qwen2_vl(tmp_path / "a") == a
    assert weights.stat().st_mtime_ns == mtime  # stamp matched: nothing rebuilt

    stamp = json.loads((a / tm.STAMP_NAME).read_text())
    (a / tm.STAMP_NAME).write_text(json.dumps(dict(stamp, seed=-1)))  # stale stamp -> rebuilt
    (a / "junk.txt").write_text("left over")
    tm.make_tiny_qwen2_vl(tmp_path / "a")
    assert not (a / "junk.txt").exists()
    assert json.loads((a / tm.STAMP_NAME).read_text()) == stamp
    assert [p.name for p in (tmp_path / "a").iterdir()] == [a.name]  # no staging folder left behind


# --------------------------------------------------------------------------- SAM


def test_sam_checkpoint_loads_strictly_with_segment_anything_builder(generated_dir, image_path):
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam

    path = tm.make_tiny_sam_checkpoint(generated_dir)
    assert path.suffix == ".pth"
    state_dict = torch.load(path, map_location="cpu", weights_only=True)

    # the dims are recognisable from the state dict, as tiny_sam_arch() documents
    arch = tm.tiny_sam_arch()
    assert state_dict["image_encoder.patch_embed.proj.weight"].shape[0] == arch["encoder_embed_dim"]
    blocks = {int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")}
    assert blocks == set(range(arch["encoder_depth"]))
    head_dim = state_dict["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    assert arch["encoder_embed_dim"] // head_dim == arch["encoder_num_heads"]
    global_blocks = [i for i in sorted(blocks) if state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] == 127]
    assert global_blocks == arch["encoder_global_attn_indexes"]

    sam = functools.partial(_build_sam, **arch)()  # sam_model_registry-style builder
    sam.load_state_dict(state_dict, strict=True)
    _assert_state_dicts_equal(sam.state_dict(), tm.build_tiny_sam().state_dict())
    assert state_dict["image_encoder.pos_embed"].abs().sum() > 0

    predictor = SamPredictor(sam.eval())
    image = np.asarray(Image.open(image_path))
    predictor.set_image(image)
    assert predictor.features.shape == (1, 256, 64, 64)
    masks, scores, low_res = predictor.predict(box=np.array([6, 10, 29, 38]), multimask_output=True)
    assert masks.shape == (3, 48, 64) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 256, 256)


# --------------------------------------------------------------------------- CLIP vision


def test_clip_vision_folder_and_single_file_agree(generated_dir, image_path):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    files = tm.make_tiny_clip_vision(generated_dir)
    assert files.single_file.suffix == ".safetensors" and files.folder.is_dir()
    model = CLIPVisionModelWithProjection.from_pretrained(files.folder, local_files_only=True).eval()
    processor = CLIPImageProcessor.from_pretrained(files.folder, local_files_only=True)
    pixels = processor(images=Image.open(image_path), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 32, 32)

    fresh = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(files.folder)).eval()
    fresh.load_state_dict(load_file(files.single_file), strict=True)
    _assert_state_dicts_equal(fresh.state_dict(), model.state_dict())
    with torch.no_grad():
        out = model(pixel_values=pixels)
        again = fresh(pixel_values=pixels)
    assert out.image_embeds.shape == (1, 16)
    assert out.last_hidden_state.shape == (1, 17, 32)
    # same weights; the two instances may pick different attention kernels (sdpa vs eager), whose
    # float32 sums differ by a few ulps per reduction over a 2-layer, 32-wide model: rtol 1e-5 is
    # ~100 eps x the ~10 reductions on the path; a weight that failed to load changes embeds by O(1)
    torch.testing.assert_close(out.image_embeds, again.image_embeds, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- T5


def test_t5_encoder_folder_loads_with_flan_architecture(generated_dir):
    from transformers import AutoTokenizer, T5EncoderModel

    path = tm.make_tiny_t5_encoder(generated_dir)
    assert (path / "spiece.model").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = T5EncoderModel.from_pretrained(path, local_files_only=True).eval()
    raw_config = json.loads((path / "config.json").read_text())
    assert raw_config["feed_forward_proj"] == "gated-gelu" and raw_config["tie_word_embeddings"] is False
    assert hasattr(model.encoder.block[0].layer[1].DenseReluDense, "wi_1")  # gated FFN: wi_0 and wi_1
    assert model.config.vocab_size >= len(tokenizer)

    text = "replace the cat on the red sofa"
    ids = tokenizer(text).input_ids
    assert ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") != tokenizer.unk_token_id

    saved = load_file(path / "model.safetensors")
    state = model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state
    assert hidden.shape == (1, len(ids), 32) and torch.isfinite(hidden).all()
