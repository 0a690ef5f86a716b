"""Region-predictor nodes inside ComfyUI (in-process): tiny CLIP vision / FLAN-T5 / CLIP text and a
tiny saved head in the model folders, checkpoint and test-time modes, input errors, and the
masked-sampling property the workflow relies on (SetLatentNoiseMask + KSampler keep the source
latent outside the predicted mask)."""

import json
import shutil

import numpy as np
import pytest
import torch
from fixtures.tiny_models import (
    make_tiny_clip_vision,
    make_tiny_t5_encoder,
    write_test_image,
)
from fixtures.tiny_regions import edited_copy, make_tiny_clip_text
from host.inprocess import import_comfy, load_checkpoint, pack_module

TINY_HEAD = {"d_model": 32, "num_heads": 2, "mlp_hidden": 32, "sem_hidden": 32}
CLIP_FILE, T5, CLIP_TEXT = "tiny-clip-vision.safetensors", "tiny-flan-t5-encoder", "tiny-clip-text"
CLIP_FOLDER = "tiny-clip-vision"
HEAD, WIDE_HEAD = "tiny_region.safetensors", "tiny_region_wide.safetensors"
INSTRUCTION = "make the red box green"
CAPTIONS = ("a red box and a blue disc", "a green box and a blue disc")


def out(result):
    return result.args if hasattr(result, "args") else result.result


def as_image(path):
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float().div(255.0)[None]


@pytest.fixture(scope="module")
def images(generated_dir):
    src = write_test_image(generated_dir / "region_nodes" / "src.png", 128, 96)
    edited = edited_copy(src, generated_dir / "region_nodes" / "edited.png")
    return as_image(src), as_image(edited)


@pytest.fixture(scope="module")
def folders(comfyui_root, generated_dir, tmp_path_factory, images):
    """Tiny encoders in models/clip_vision and models/text_encoders, two heads in models/contextedit:
    one fitted to the test image by the engine's test-time mode, one built for wider encoders."""
    import_comfy(comfyui_root)
    import folder_paths

    pack_module(comfyui_root, "nodes.model_folders").register_model_folders()
    objective = pack_module(comfyui_root, "nodes.regions.objective")
    model = pack_module(comfyui_root, "nodes.regions.model")
    encoders_mod = pack_module(comfyui_root, "nodes.regions.encoders")
    root = tmp_path_factory.mktemp("region_models")
    clip_dir, text_dir, head_dir = root / "clip_vision", root / "text_encoders", root / "contextedit"
    for d in (clip_dir, text_dir, head_dir):
        d.mkdir()
    clip = make_tiny_clip_vision(generated_dir)
    shutil.copy(clip.single_file, clip_dir / CLIP_FILE)
    shutil.copy(clip.folder / "config.json", clip_dir / CLIP_FILE.replace(".safetensors", ".json"))
    shutil.copytree(clip.folder, clip_dir / CLIP_FOLDER)
    shutil.copytree(make_tiny_clip_text(generated_dir), clip_dir / CLIP_TEXT)
    shutil.copytree(make_tiny_t5_encoder(generated_dir), text_dir / T5)
    for kind, path in (("clip_vision", clip_dir), ("text_encoders", text_dir), ("contextedit", head_dir)):
        folder_paths.add_model_folder_path(kind, str(path))

    encoders = objective.RegionEncoders(encoders_mod.ClipVisionEncoder.load(clip.folder),
                                        encoders_mod.T5InstructionEncoder.load(text_dir / T5),
                                        encoders_mod.ClipTextEncoder.load(clip_dir / CLIP_TEXT))
    source, edited = (x.movedim(-1, 1) for x in images)
    fitted = objective.optimize_region(encoders, source, INSTRUCTION, *CAPTIONS, edited, steps=20, lr=1e-2,
                                       config=encoders.predictor_config(**TINY_HEAD))
    fitted.predictor.save(head_dir / HEAD)
    model.RegionPredictor(encoders.predictor_config(**TINY_HEAD, vision_dim=48)).save(head_dir / WIDE_HEAD)
    return {"encoders": encoders, "fitted": fitted}


@pytest.fixture(scope="module")
def regions(comfyui_root):
    return pack_module(comfyui_root, "nodes.regions.node")


@pytest.fixture(scope="module")
def errors(comfyui_root):
    return pack_module(comfyui_root, "nodes.errors")


def load(regions, head, clip_text=None):
    kw = {} if clip_text is None else {"clip_text": clip_text}
    with torch.inference_mode():  # as ComfyUI runs nodes
        return out(regions.LoadRegionPredictor.execute(region_predictor=head, clip_vision=CLIP_FILE,
                                                       text_encoder=T5, **kw))[0]


def predict(regions, image, predictor, **kw):
    args = {"instruction": INSTRUCTION, "threshold": 0.5, "test_time_steps": 0, "learning_rate": 1e-2, "seed": 0}
    args.update(kw)
    with torch.inference_mode():
        return out(regions.PredictEditRegion.execute(image=image, region_predictor=predictor, **args))


def test_loader_lists_the_folders(folders, regions):
    schema = regions.LoadRegionPredictor.define_schema()
    options = {i.id: i.options for i in schema.inputs}
    assert options["region_predictor"][0] == regions.NO_PREDICTOR and HEAD in options["region_predictor"]
    assert CLIP_FILE in options["clip_vision"] and CLIP_FOLDER in options["clip_vision"] and T5 in options["text_encoder"]
    assert CLIP_TEXT in options["clip_text"]
    # a Hugging Face CLIP vision folder loads too, and predicts what the single file predicts
    with torch.inference_mode():
        from_folder = out(regions.LoadRegionPredictor.execute(region_predictor=HEAD, clip_vision=CLIP_FOLDER,
                                                              text_encoder=T5))[0]
    image = torch.rand(1, 64, 80, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(predict(regions, image, from_folder)[0], predict(regions, image, load(regions, HEAD))[0])


def test_checkpoint_mode_masks_at_image_size(folders, regions, images):
    source, _ = images
    before = source.clone()
    predictor = load(regions, HEAD)
    soft, mask, overlay = predict(regions, source, predictor)
    assert soft.shape == mask.shape == (1, 96, 128) and overlay.shape == (1, 96, 128, 3)
    assert torch.equal(source, before)  # inputs are never changed
    assert ((soft >= 0) & (soft <= 1)).all() and torch.equal(mask, (soft >= 0.5).float())
    # the node is the engine: the saved head's prediction, upsampled to the image
    engine = pack_module(None, "nodes.regions.objective")
    head = pack_module(None, "nodes.regions.model").RegionPredictor.load(regions.resolve_model("contextedit", HEAD))
    ref = engine.predict_region(head, folders["encoders"], source.movedim(-1, 1), [INSTRUCTION]).soft_at(96, 128)
    torch.testing.assert_close(soft, ref[:, 0])
    inside = mask[0].bool()
    # outside the mask the overlay is the image (blend weight 0), up to float32 rounding
    assert torch.allclose(overlay[0][~inside], source[0][~inside])
    assert not torch.allclose(overlay[0][inside], source[0][inside]) or not inside.any()


def test_test_time_mode_fits_a_fresh_head(folders, regions, images, comfyui_root):
    import comfy.utils

    source, edited = images
    inference = pack_module(comfyui_root, "nodes.regions.inference")
    predictor = load(regions, regions.NO_PREDICTOR, clip_text=CLIP_TEXT)
    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: progress.append((value, total)))
    try:
        soft, mask, overlay = predict(regions, source, predictor, test_time_steps=15, edited=edited,
                                      source_caption=CAPTIONS[0], target_caption=CAPTIONS[1])
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert progress[-1] == (15, 15) and len(progress) == 15
    assert soft.shape == mask.shape == (1, 96, 128) and overlay.shape == (1, 96, 128, 3)
    with torch.inference_mode():
        result = inference.predict_masks(predictor.load(), source, INSTRUCTION, steps=15, lr=1e-2, edited=edited,
                                         source_caption=CAPTIONS[0], target_caption=CAPTIONS[1])
    assert result.test_time and len(result.losses[0]) == 16
    assert result.losses[0][-1] < result.losses[0][0], result.losses[0]
    torch.testing.assert_close(result.soft, soft)  # same seed, same fit
    assert not torch.allclose(result.soft, result.initial_soft)  # differs from the untrained head
    # a checkpoint + test_time_steps > 0 also fits (a fresh head of the checkpoint's sizes)
    soft2, _, _ = predict(regions, source, load(regions, HEAD, clip_text=CLIP_TEXT), test_time_steps=3,
                          edited=edited, source_caption=CAPTIONS[0], target_caption=CAPTIONS[1])
    assert soft2.shape == (1, 96, 128)


def test_test_time_loss_weights_are_node_inputs(folders, regions, errors, images, comfyui_root):
    """Every loss weight of eq. 10/11 is a node input defaulting to LossWeights' default, and the
    node fits with the weights it is given (same map as the engine with those weights)."""
    losses = pack_module(comfyui_root, "nodes.regions.losses")
    inference = pack_module(comfyui_root, "nodes.regions.inference")
    objective = pack_module(comfyui_root, "nodes.regions.objective")
    schema = {i.id: i for i in regions.PredictEditRegion.define_schema().inputs}
    assert {k: schema[k].default for k in losses.LossWeights().as_dict()} == losses.LossWeights().as_dict()
    assert schema["learning_rate"].default == objective.DEFAULT_TEST_TIME_LR
    source, edited = images
    predictor = load(regions, regions.NO_PREDICTOR, clip_text=CLIP_TEXT)
    custom = {"alpha": 0.5, "beta": 2.0, "lambda_g": 0.0, "lambda_d": 3.0, "lambda_s": 1.0}
    tt = {"test_time_steps": 3, "edited": edited, "source_caption": CAPTIONS[0], "target_caption": CAPTIONS[1]}
    soft, _, _ = predict(regions, source, predictor, **tt, **custom)
    with torch.inference_mode():
        engine = {name: inference.predict_masks(predictor.load(), source, INSTRUCTION, steps=3, lr=1e-2,
                                                edited=edited, source_caption=CAPTIONS[0],
                                                target_caption=CAPTIONS[1], weights=weights).soft
                  for name, weights in (("custom", losses.LossWeights(**custom)), ("default", losses.LossWeights()))}
    # same seed, same weights, same CPU ops: equal up to float32 rounding (torch's default tolerance)
    torch.testing.assert_close(soft, engine["custom"])
    # 3 Adam steps at lr 1e-2 with other weights move the probabilities by far more than 1e-3
    assert (soft - engine["default"]).abs().max() > 1e-3
    with pytest.raises(errors.InputError) as info:
        predict(regions, source, predictor, **tt, lambda_s=-1.0)
    assert info.value.input_name == "lambda_s"


def test_bad_inputs_name_the_input(folders, regions, errors, images):
    source, edited = images
    predictor = load(regions, HEAD)
    fresh = load(regions, regions.NO_PREDICTOR)

    def name(fn, **kw):
        with pytest.raises(errors.InputError) as info:
            fn(**kw)
        return info.value.input_name

    assert name(predict, regions=regions, image=source, predictor=predictor, instruction="  ") == "instruction"
    assert name(predict, regions=regions, image=source[:, :20, :20], predictor=predictor) == "image"
    assert name(load, regions=regions, head=WIDE_HEAD) == "region_predictor"
    assert name(predict, regions=regions, image=source, predictor="a model") == "region_predictor"
    tt = {"test_time_steps": 5, "source_caption": CAPTIONS[0], "target_caption": CAPTIONS[1]}
    assert name(predict, regions=regions, image=source, predictor=predictor, **tt) == "edited"
    assert name(predict, regions=regions, image=source, predictor=fresh, edited=edited, source_caption=CAPTIONS[0],
                target_caption=CAPTIONS[1]) == "test_time_steps"
    assert name(predict, regions=regions, image=source, predictor=fresh, edited=edited, test_time_steps=5,
                target_caption=CAPTIONS[1]) == "source_caption"
    assert name(predict, regions=regions, image=source, predictor=fresh, edited=edited, test_time_steps=5,
                source_caption=CAPTIONS[0], target_caption="") == "target_caption"
    # no CLIP text model loaded: L_CLIP cannot be computed
    assert name(predict, regions=regions, image=source, predictor=fresh, edited=edited, **tt) == "region_predictor"


def test_masked_sampling_keeps_the_source_latent_outside_the_mask(folders, regions, images, comfyui_root,
                                                                   tiny_checkpoints):
    """Appendix A, eq. 22-23 with ComfyUI's own nodes, as workflows/region_edit.json runs them:
    SetLatentNoiseMask (mask as [B, 1, H, W]) + KSampler at denoise 1.0 (comfy.sample.sample with
    noise_mask, generation from noise). Outside the predicted mask the sampled latent is the source
    latent; inside it is generated."""
    import comfy.sample

    source, _ = images
    predictor = load(regions, HEAD)
    soft, _, _ = predict(regions, source, predictor)
    threshold = float(soft.min() + soft.max()) / 2  # a region that is neither empty nor the whole image
    _, mask, _ = predict(regions, source, predictor, threshold=min(max(threshold, 0.01), 0.99))
    # align to the 8-px latent grid: a latent cell is edited if any of its pixels is
    cells = torch.nn.functional.max_pool2d(mask[:, None], 8)
    aligned = torch.nn.functional.interpolate(cells, scale_factor=8, mode="nearest")[:, 0]
    assert 0 < cells.mean() < 1, cells

    model, clip, vae = load_checkpoint(comfyui_root, tiny_checkpoints.sd15)
    with torch.inference_mode():
        latent = vae.encode(source[..., :3])
        noise_mask = aligned.reshape((-1, 1, aligned.shape[-2], aligned.shape[-1]))  # SetLatentNoiseMask
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(CAPTIONS[1]), show_pbar=False)
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(""), show_pbar=False)
        noise = comfy.sample.prepare_noise(latent, 7)
        samples = comfy.sample.sample(model, noise, 3, 5.0, "euler", "normal", positive, negative, latent,
                                      denoise=1.0, noise_mask=noise_mask, disable_pbar=True, seed=7)
    outside = (cells[:, 0] == 0)[:, None].expand_as(latent)
    diff_out = (samples - latent)[outside].abs().max()
    diff_in = (samples - latent)[~outside].abs().max()
    assert diff_in > 1e-2, diff_in  # the region is re-generated
    # exact up to float rounding: eq. 23 blends the source back in, the last Euler step and the
    # latent scaling (x * 0.18215 / 0.18215) round in the last bits
    assert diff_out <= 1e-5 * max(1.0, float(latent.abs().max())), diff_out
    print(json.dumps({"max_abs_diff_outside": float(diff_out), "max_abs_diff_inside": float(diff_in),
                      "exactly_equal_outside": bool(diff_out == 0)}))


def test_cli_trained_checkpoint_loads_in_the_node(folders, regions, images, generated_dir, tmp_path):
    """The documented training command's output, copied into models/contextedit, loads through the
    node and predicts exactly what the engine predicts with it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from regions_common import tiny_model_paths, write_dataset

    repo = Path(__file__).resolve().parents[2]
    paths = tiny_model_paths(generated_dir)
    data = write_dataset(tmp_path / "data", with_edits=True)
    out_dir = tmp_path / "run"
    head = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_HEAD.items()]
    cmd = [sys.executable, os.path.join("nodes", "regions", "train.py"), "train", "--data", str(data),
           "--clip-vision", str(paths["clip_vision"]), "--clip-text", str(paths["clip_text"]),
           "--text-encoder", str(paths["text_encoder"]), "--out", str(out_dir), "--steps", "4",
           "--image-size", "64", "--num-threads", "1", *head]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    run = subprocess.run(cmd, check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    target = Path(regions.resolve_model("contextedit", HEAD)).parent / "cli_trained.safetensors"
    shutil.copy(out_dir / "region_predictor.safetensors", target)
    source, _ = images
    soft, mask, _ = predict(regions, source, load(regions, "cli_trained.safetensors"))
    engine = pack_module(None, "nodes.regions.objective")
    trained = pack_module(None, "nodes.regions.model").RegionPredictor.load(out_dir / "region_predictor.safetensors")
    ref = engine.predict_region(trained, folders["encoders"], source.movedim(-1, 1), [INSTRUCTION]).soft_at(96, 128)
    # the same head and encoders on the same CPU: equal up to float32 rounding (default tolerance)
    torch.testing.assert_close(soft, ref[:, 0])
    assert soft.shape == mask.shape == (1, 96, 128)
