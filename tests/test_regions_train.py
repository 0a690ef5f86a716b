"""Training CLI (nodes/regions/train.py): prepare, overfit, checkpoints, resume, documented command."""

import json
import os
import subprocess
import sys

import pytest
import torch
from contextedit.nodes.errors import InputError
from contextedit.nodes.regions import train as T
from contextedit.nodes.regions.model import RegionPredictor
from fixtures.tiny_models import make_tiny_clip_vision, make_tiny_clip_vision_8x8
from fixtures.tiny_regions import LocalisationScenario, contrast_and_area
from regions_common import TINY_HEAD, one_thread, tiny_model_paths, write_dataset  # noqa: F401
from safetensors import safe_open
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(generated_dir):
    return tiny_model_paths(generated_dir)


def train_args(models, data, out, steps, *extra):
    head = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_HEAD.items()]
    return ["train", "--data", str(data), "--clip-vision", str(models["clip_vision"]), "--clip-text",
            str(models["clip_text"]), "--text-encoder", str(models["text_encoder"]), "--out", str(out),
            "--steps", str(steps), "--image-size", "64", "--num-threads", "1", *head, *extra]


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_overfitting_four_samples_lowers_the_loss(models, tmp_path):
    """300 steps on the 4-sample dataset: the mean of the last 10 logged L_total is below 60% of
    the first step's (measured: ~3.6 -> ~1.6)."""
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert T.main(train_args(models, data, out, 300, "--batch-size", "4", "--lr", "3e-3", "--log-every", "1",
                             "--save-every", "0")) == 0
    log = read_log(out)
    assert [row["step"] for row in log] == list(range(1, 301))
    first, last = log[0]["total"], sum(r["total"] for r in log[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert (out / "log.csv").read_text().splitlines()[0].startswith("step,epoch,samples_per_s")
    head = RegionPredictor.load(out / "region_predictor.safetensors")
    assert head.config.d_model == 32 and head.config.vision_dim == 32


GRIDS = {"4x4": make_tiny_clip_vision, "8x8": make_tiny_clip_vision_8x8}


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_training_with_the_default_weights_localises_the_edit(generated_dir, tmp_path, grid):
    """The trainer with its shipped defaults (loss weights, lr, head size; only the run length and
    batch are set) on copies of the localisation scenario: the trained head's region covers the
    edited left box and little else, at a 4x4 and an 8x8 CLIP patch grid (an empty or a full
    region has contrast 0 and area 0 or 1). Measured (4x4 / 8x8): contrast +0.75 / +0.94, area
    0.44 / 0.23; with eq. 9 summed over N^2 pairs (the old default): contrast ~0, area 0."""
    from contextedit.nodes.regions.encoders import ClipVisionEncoder
    from contextedit.nodes.regions.losses import LossWeights
    from contextedit.nodes.regions.objective import predict_region

    scenario = LocalisationScenario(generated_dir, ClipVisionEncoder.load(GRIDS[grid](generated_dir).folder))
    data = scenario.write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--clip-vision", "-", "--clip-text", "-", "--text-encoder", "-",
            "--out", str(out), "--image-size", "64", "--steps", "50", "--batch-size", "2", "--save-every", "0"]
    path = T.train(T.build_parser().parse_args(argv), encoders=scenario.encoders)
    assert json.loads(safe_open(str(path), "pt").metadata()["loss_weights"]) == LossWeights().as_dict()
    head = RegionPredictor.load(path)
    region = predict_region(head, scenario.encoders, scenario.source, [scenario.args[1]])
    contrast, area = contrast_and_area(region.probs[0], scenario.inside)
    assert contrast > 0.5, contrast
    assert 0.1 < area < 0.6, area


def test_every_loss_weight_flag_reaches_the_loss(models, tmp_path):
    """--alpha/--beta/--lambda-g/--lambda-d/--lambda-s default to LossWeights' defaults, and each
    one weighs its own term: the logged L_total is eq. 11 of the logged terms with these weights."""
    from contextedit.nodes.regions.losses import LossWeights

    defaults = T.build_parser().parse_args(train_args(models, tmp_path, tmp_path, 1))
    assert T.loss_weights(defaults) == LossWeights()
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    w = {"alpha": 0.5, "beta": 2.0, "lambda_g": 0.3, "lambda_d": 0.7, "lambda_s": 1.5}
    flags = [x for k, v in w.items() for x in ("--" + k.replace("_", "-"), str(v))]
    assert T.main(train_args(models, data, out, 2, "--batch-size", "2", "--log-every", "1", "--save-every", "0",
                             *flags)) == 0
    meta = safe_open(str(out / "region_predictor.safetensors"), "pt").metadata()
    assert json.loads(meta["loss_weights"]) == w
    for row in read_log(out):
        clip = w["lambda_g"] * row["CLIPg"] + w["lambda_d"] * row["CLIPd"] + w["lambda_s"] * row["CLIPs"]
        # the log rounds each term to 6 decimals: |error| <= 0.5e-6 * (1 + 0.5 + 2 * (1 + 0.3 + 0.7 + 1.5))
        assert row["CLIP"] == pytest.approx(clip, abs=1e-5), row
        assert row["total"] == pytest.approx(w["alpha"] * row["semAlign"] + w["beta"] * row["CLIP"], abs=1e-5), row


def test_resume_continues_bit_exactly(models, tmp_path):
    data = write_dataset(tmp_path / "data")
    common = ("--batch-size", "2", "--lr", "3e-3", "--log-every", "1", "--save-every", "3")
    assert T.main(train_args(models, data, tmp_path / "straight", 8, *common)) == 0
    assert T.main(train_args(models, data, tmp_path / "resumed", 6, *common)) == 0
    assert T.main(train_args(models, data, tmp_path / "resumed", 8, *common, "--resume")) == 0
    a = load_file(str(tmp_path / "straight" / "region_predictor.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "region_predictor.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_log(tmp_path / "resumed")] == list(range(1, 9))
    assert (tmp_path / "resumed" / "checkpoints" / "step_3.safetensors").is_file()
    assert json.loads((tmp_path / "resumed" / "state" / "trainer.json").read_text()) == {"step": 8}


def test_prepare_fills_fields(tmp_path):
    data = write_dataset(tmp_path / "data", with_edits=False)
    records = T.prepare(data, log=lambda *_: None)
    assert all(r["edit_source"] == "template" and r["instruction"] and r["target_caption"] for r in records)
    assert T.template_edit("a cat.") == T.template_edit("a cat")  # deterministic
    replies = iter(['Sure! {"instruction": "paint the box blue", "target_caption": "a blue box"}', "no idea"] * 2)
    records = T.prepare(data, llm=lambda prompt: next(replies), overwrite=True, log=lambda *_: None)
    assert [r["edit_source"] for r in records] == ["llm", "template", "llm", "template"]
    assert records[0]["instruction"] == "paint the box blue" and records[0]["target_caption"] == "a blue box"
    assert T.read_metadata(data)[0]["instruction"] == "paint the box blue"
    # captions from a VLM where missing; without one: an error naming --vlm
    (data / "extra.png").write_bytes((data / "img0.png").read_bytes())
    with open(data / "metadata.jsonl", "a") as handle:
        handle.write(json.dumps({"image": "extra.png"}) + "\n")
    with pytest.raises(InputError) as info:
        T.prepare(data, log=lambda *_: None)
    assert info.value.input_name == "vlm"
    records = T.prepare(data, vlm=lambda image: "  a grey   picture ", log=lambda *_: None)
    assert records[-1]["caption"] == "a grey picture" and records[-1]["caption_source"] == "vlm"


def test_train_rejects_unprepared_data(models, tmp_path):
    data = write_dataset(tmp_path / "data", with_edits=False)
    with pytest.raises(InputError) as info:
        T.RegionDataset(data, 64)
    assert info.value.input_name == "data" and "prepare" in str(info.value)
    assert T.main(train_args(models, data, tmp_path / "run", 2)) == 2


def test_documented_command_round_trip(models, generated_dir, tmp_path):
    """prepare (tiny VLM for a missing caption, template edits, tiny SD img2img) + train + reload,
    exactly as the module docstring says, as subprocesses."""
    from contextedit.nodes.regions.objective import predict_region
    from fixtures.tiny_models import make_tiny_diffusers_sd, make_tiny_qwen2_vl
    from regions_common import load_image, tiny_encoders

    data = write_dataset(tmp_path / "data", with_edits=False)
    lines = (data / "metadata.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record.pop("caption")
    lines[1] = json.dumps(record)
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    script = os.path.join("nodes", "regions", "train.py")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    prep = subprocess.run([sys.executable, script, "prepare", "--data", str(data), "--vlm",
                           str(make_tiny_qwen2_vl(generated_dir)), "--generator", str(make_tiny_diffusers_sd(generated_dir)),
                           "--generator-steps", "2", "--num-threads", "1"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    records = T.read_metadata(data)
    assert records[1]["caption_source"] == "vlm" and all((data / r["edited"]).is_file() for r in records)
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, script, *train_args(models, data, out, 6, "--batch-size", "2",
                                                              "--save-every", "3", "--log-every", "1")],
                         check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "saved" in run.stdout and len(read_log(out)) == 6
    head = RegionPredictor.load(out / "region_predictor.safetensors")
    region = predict_region(head, tiny_encoders(generated_dir), load_image(data / "img0.png"),
                            [records[0]["instruction"]])
    assert region.mask_at(64, 64).shape == (1, 1, 64, 64)
