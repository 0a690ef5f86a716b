"""Region predictor (nodes/regions/model.py), its encoders and input checks, on tiny models."""

import pytest
import torch
from contextedit.nodes.errors import InputError
from contextedit.nodes.regions.encoders import ClipVisionEncoder
from contextedit.nodes.regions.model import RegionPredictor, RegionPredictorConfig
from contextedit.nodes.regions.objective import encode_batch, predict_region
from regions_common import TINY_HEAD, one_thread, tiny_encoders, tiny_model_paths  # noqa: F401


@pytest.fixture(scope="module")
def encoders(generated_dir):
    return tiny_encoders(generated_dir)


def tiny_config(**kw):
    return RegionPredictorConfig(**{"vision_dim": 32, "text_dim": 32, "embed_dim": 16, **TINY_HEAD, **kw})


def test_default_config_is_the_papers():
    cfg = RegionPredictorConfig()
    assert (cfg.vision_dim, cfg.text_dim, cfg.d_model, cfg.embed_dim) == (1024, 768, 768, 768)


def test_forward_shapes_and_multiscale_outputs():
    torch.manual_seed(0)
    head = RegionPredictor(tiny_config())
    out = head(torch.randn(2, 16, 32), torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    assert out.probs.shape == (2, 16) and out.grid == 4
    assert out.soft.shape == (2, 1, 4, 4) and ((out.probs > 0) & (out.probs < 1)).all()
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.mask.flatten(1), (out.probs >= 0.5).float())
    assert out.soft_at(48, 64).shape == (2, 1, 48, 64) and out.mask_at(48, 64).shape == (2, 1, 48, 64)
    assert head.semantic_embedding(out.edited_features).shape == (2, 16)
    # padding tokens are ignored: changing them changes nothing
    feats = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 2)
    a = head(torch.ones(2, 16, 32), feats, mask).probs
    feats[:, 3:] = 100.0
    assert torch.allclose(a, head(torch.ones(2, 16, 32), feats, mask).probs)


def test_paper_verbatim_variant_runs():
    head = RegionPredictor(tiny_config(residual=False, num_heads=1))
    assert head(torch.randn(1, 9, 32), torch.randn(1, 3, 32)).soft.shape == (1, 1, 3, 3)


def test_checkpoint_reloads_bit_exactly(tmp_path):
    torch.manual_seed(1)
    head = RegionPredictor(tiny_config(threshold=0.3))
    for p in head.parameters():  # not the init values: make sure trained-looking weights survive
        p.data.add_(torch.randn_like(p) * 0.1)
    head.save(tmp_path / "r.safetensors", {"step": 7})
    loaded = RegionPredictor.load(tmp_path / "r.safetensors")
    assert loaded.config == head.config
    a, b = head.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x, t = torch.randn(1, 16, 32), torch.randn(1, 4, 32)
    head.eval()
    assert torch.equal(head(x, t).probs, loaded(x, t).probs)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    for name in ("other.safetensors", "junk.safetensors"):
        with pytest.raises(InputError) as info:
            RegionPredictor.load(tmp_path / name)
        assert info.value.input_name == "region_predictor"


def test_clip_vision_folder_and_single_file_agree(generated_dir):
    paths = tiny_model_paths(generated_dir)
    folder = ClipVisionEncoder.load(paths["clip_vision"])
    single = ClipVisionEncoder.load(paths["clip_vision_file"], config=paths["clip_vision"] / "config.json")
    x = torch.rand(2, 3, 40, 56)
    for a, b in zip(folder(x), single(x)):
        assert torch.equal(a, b)
    embeds, patches = folder(x)
    assert embeds.shape == (2, 16) and patches.shape == (2, 16, 32)
    assert not any(p.requires_grad for p in folder.parameters())
    with pytest.raises(InputError) as info:  # 32-wide: heads cannot be inferred without a config
        ClipVisionEncoder.load(paths["clip_vision_file"])
    assert info.value.input_name == "clip_vision"


def test_predict_region_on_tiny_encoders(encoders):
    head = RegionPredictor(encoders.predictor_config(**TINY_HEAD))
    out = predict_region(head, encoders, torch.rand(2, 3, 64, 64), ["make the red box green", "remove the disc"])
    assert out.soft.shape == (2, 1, 4, 4) and out.mask_at(64, 64).shape == (2, 1, 64, 64)


def test_bad_inputs_name_the_input(encoders):
    head = RegionPredictor(encoders.predictor_config(**TINY_HEAD))
    image = torch.rand(1, 3, 64, 64)
    cases = [
        (lambda: predict_region(head, encoders, image, ["   "]), "instruction"),
        (lambda: predict_region(head, encoders, image, [""]), "instruction"),
        (lambda: predict_region(head, encoders, torch.rand(1, 3, 16, 64), ["make it red"]), "image"),
        (lambda: predict_region(head, encoders, torch.rand(1, 64, 64), ["make it red"]), "image"),
        (lambda: predict_region(RegionPredictor(tiny_config(vision_dim=48)), encoders, image, ["x y"]),
         "region_predictor"),
        (lambda: predict_region(RegionPredictor(tiny_config(text_dim=768)), encoders, image, ["x y"]),
         "region_predictor"),
        (lambda: predict_region(RegionPredictor(tiny_config(embed_dim=768)), encoders, image, ["x y"]),
         "region_predictor"),
        (lambda: head(torch.randn(1, 15, 32), torch.randn(1, 3, 32)), "clip_vision"),
        (lambda: head(torch.randn(1, 16, 32), torch.randn(1, 3, 8)), "text_encoder"),
        (lambda: encode_batch(encoders, image, ["a", "b"]), "instruction"),
        (lambda: RegionPredictorConfig(d_model=30, num_heads=4), "num_heads"),
    ]
    for call, name in cases:
        with pytest.raises(InputError) as info:
            call()
        assert info.value.input_name == name, (name, str(info.value))
