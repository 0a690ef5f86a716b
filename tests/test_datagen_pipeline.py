"""rewrite / score / export stages, the `all` command in-process, and the export folder read by the
region trainer (prepare + 2 training steps) and by the benchmark runner's MagicBrush loader."""

import json
import math

import numpy as np
import pytest
from contextedit.nodes.datagen import cli, instruct
from contextedit.nodes.datagen.inpaint import Inpainter
from contextedit.nodes.datagen.runner import read_failures, read_json
from contextedit.nodes.datagen.schemas import VALIDATORS
from contextedit.nodes.errors import InputError
from contextedit.nodes.masks import rle
from contextedit.nodes.masks.sam import load_sam
from contextedit.nodes.metrics import datasets
from contextedit.nodes.regions import train as T
from datagen_common import (
    SIZES,
    ScriptedVLM,
    default_reply,
    tiny_sam_path,
    tiny_vlm,
    write_images,
)
from fixtures.tiny_inpaint import (
    make_tiny_inpaint_folder,
    make_tiny_inpaint_single_file,
)
from regions_common import TINY_HEAD, one_thread, tiny_model_paths  # noqa: F401


def script(kind, size, input_size, prompt):
    # the replace edit is rated low by the scorer, everything else high
    if kind == "sc" and "Editing instruction: change the red box to green box" in prompt:
        return '{"score": [2, 9], "reasoning": "the box is not green"}'
    return default_reply(kind, size, input_size, prompt)


@pytest.fixture(scope="module")
def run(generated_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    images = write_images(root / "images")
    vlm = ScriptedVLM(tiny_vlm(generated_dir), script)
    inpainter = Inpainter(make_tiny_inpaint_single_file(generated_dir), config=make_tiny_inpaint_folder(generated_dir),
                          device="cpu", steps=2, resolution=64)
    out = root / "run"
    status = cli.main(["all", "--images", str(images), "--out", str(out), "--no-progress", "--seed", "3"],
                      vlm=vlm, sam=load_sam(tiny_sam_path(generated_dir)), inpainter=inpainter)
    return {"out": out, "status": status, "vlm": vlm, "root": root}


def test_every_stage_record_validates_and_nothing_failed(run):
    assert run["status"] == 0
    for stage in VALIDATORS:
        assert not read_failures(run["out"], stage)
        for item in SIZES:
            VALIDATORS[stage](read_json(run["out"] / stage / f"{item}.json"))
    # rewrite and SC see source and result, PQ the result only
    counts = {}
    for kind, _, n_images in run["vlm"].calls:
        counts.setdefault(kind, set()).add(n_images)
    assert counts == {"caption": {1}, "ground": {1}, "filter": {1}, "rewrite": {2}, "sc": {2}, "pq": {1}}


def test_scores_follow_viescore_and_our_threshold(run):
    record = read_json(run["out"] / "score" / "a.json")
    assert record["threshold"] == instruct.THRESHOLD == 6.0
    remove, add, replace, back = record["pairs"]
    # VIEScore: O = sqrt(min(SC) * min(PQ)); scripted SC [8, 7], PQ [9, 6] -> sqrt(7 * 6)
    assert remove["scores"]["SC"] == [8.0, 7.0] and remove["scores"]["PQ"] == [9.0, 6.0]
    assert remove["scores"]["overall"] == pytest.approx(math.sqrt(7 * 6), abs=1e-12)  # float64, one sqrt
    assert remove["keep"] is True
    assert replace["scores"]["overall"] == pytest.approx(math.sqrt(2 * 6), abs=1e-12)  # float64, one sqrt
    assert replace["keep"] is False
    # reverse pairs are not judged (InsightEdit's 5_evaluate.py); they take their forward pair's verdict
    assert add["scores"] is None and add["scored_with"] == remove["pair_id"] and add["keep"] is True
    assert back["scores"] is None and back["scored_with"] == replace["pair_id"] and back["keep"] is False
    assert remove["simple_instruction"] == "remove the red box"  # scripted rewrite echoes the template
    assert remove["reasoning_instruction"] == "edit the thing on the left"


def test_export_holds_the_kept_pairs_only(run):
    export = run["out"] / "export"
    rows = [json.loads(line) for line in (export / "pairs.jsonl").read_text().splitlines()]
    kept = [(item, p) for item in SIZES for p in read_json(run["out"] / "score" / f"{item}.json")["pairs"] if p["keep"]]
    assert [r["pair_id"] for r in rows] == [p["pair_id"] for _, p in kept] and len(rows) == 2 * len(SIZES)
    assert {r["task_type"] for r in rows} == {"remove", "add"}
    sessions = json.loads((export / "edit_sessions.json").read_text())
    assert sorted(sessions) == sorted(r["pair_id"] for r in rows)


def test_export_min_score_refilters_a_reverse_pair_on_its_forward_pairs_score(run, tmp_path):
    from contextedit.nodes.datagen.export import export

    # overall scores: remove sqrt(7 * 6) = 6.48, replace sqrt(2 * 6) = 3.46; reverse pairs follow
    counts = export(run["out"], tmp_path / "low", min_score=3.0, log=None)
    assert counts == {"exported": 4 * len(SIZES), "dropped": 0, "failed": 0}
    counts = export(run["out"], tmp_path / "mid", min_score=5.0, log=None)
    assert counts["exported"] == 2 * len(SIZES) and counts["dropped"] == 2 * len(SIZES)
    rows = [json.loads(line) for line in (tmp_path / "mid" / "pairs.jsonl").read_text().splitlines()]
    assert {r["task_type"] for r in rows} == {"remove", "add"}
    assert all((r["scored_with"] != "") == (r["task_type"] == "add") for r in rows)


def test_export_loads_in_the_benchmark_runners_magicbrush_reader(run):
    from PIL import Image

    export = run["out"] / "export"
    assert datasets.detect_layout(str(export)) == "magicbrush"
    samples = datasets.load_magicbrush(str(export))
    rows = {json.loads(line)["pair_id"]: json.loads(line) for line in (export / "pairs.jsonl").read_text().splitlines()}
    assert len(samples) == len(rows)
    for sample in samples:
        row = rows[sample.id.rsplit("_", 1)[0]]
        assert sample.instruction == row["instruction"] and sample.target_prompt == row["target_caption"]
        assert sample.source_prompt == row["caption"]
        source = datasets.load_rgb(sample.image)
        h, w = source.shape[:2]
        assert datasets.load_rgb(sample.reference).shape == (h, w, 3)
        expected = rle.decode(read_json(run["out"] / "score" / f"{row['source_id']}.json")["pairs"][0]["segmentation"])
        assert np.array_equal(datasets.sample_mask(sample, h, w), expected.astype(np.float32))
        with Image.open(sample.image) as image:
            assert image.size == SIZES[row["source_id"]]


def test_export_loads_in_the_region_trainer_prepare_and_train(run, generated_dir, tmp_path):
    export = run["out"] / "export"
    records = T.prepare(export, log=lambda *_: None)  # every field is there: nothing to generate
    assert all(r["edited"].endswith("-output1.png") for r in records)
    assert [r["instruction"] for r in records] == [json.loads(line)["instruction"] for line in
                                                   (export / "pairs.jsonl").read_text().splitlines()]
    models = tiny_model_paths(generated_dir)
    head = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_HEAD.items()]
    out = tmp_path / "region"
    assert T.main(["train", "--data", str(export), "--clip-vision", str(models["clip_vision"]), "--clip-text",
                   str(models["clip_text"]), "--text-encoder", str(models["text_encoder"]), "--out", str(out),
                   "--steps", "2", "--batch-size", "2", "--image-size", "64", "--num-threads", "1",
                   "--log-every", "1", *head]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2] and all(math.isfinite(row["total"]) for row in log)
    assert (out / "region_predictor.safetensors").is_file()


def test_score_and_rewrite_replies_that_cannot_be_read_raise():
    with pytest.raises(instruct.UnreadableReply, match="reasoning_instruction"):
        instruct.parse_rewrite_reply('{"simple_instruction": "x", "source_caption": "a", "target_caption": "b"}')
    with pytest.raises(instruct.UnreadableReply, match="0..10"):
        instruct.parse_score_reply('{"score": [11, 3]}')
    assert instruct.parse_score_reply('<think>hmm</think> {"score": [3, 4.5], "reasoning": "ok"}') == ([3.0, 4.5], "ok")


def test_describe_pair_for_the_node_never_fails_on_a_reply(generated_dir):
    from PIL import Image

    vlm = tiny_vlm(generated_dir)
    source, edited = Image.new("RGB", (64, 48), (10, 20, 30)), Image.new("RGB", (64, 48), (200, 20, 30))
    good = instruct.describe_pair(ScriptedVLM(vlm), source, edited, "remove the red box", "remove")
    assert good["simple_instruction"] == "remove the red box" and good["target_caption"] == "after: remove the red box"
    assert good["scores"]["overall"] == pytest.approx(math.sqrt(7 * 6), abs=1e-12)  # float64, one sqrt
    assert good["keep"] is True and "VIEScore" in instruct.pair_report(good)
    garbage = ScriptedVLM(vlm, lambda kind, size, input_size, prompt: "no idea")
    bad = instruct.describe_pair(garbage, source, edited, "remove the red box", "remove")
    assert bad["simple_instruction"] == "remove the red box" and bad["reasoning_instruction"] == ""
    assert bad["scores"] is None and len(bad["notes"]) == 2
    skipped = instruct.describe_pair(ScriptedVLM(vlm), source, edited, "remove the red box", "remove", score=False)
    assert skipped["scores"] is None and [c[0] for c in garbage.calls] == ["rewrite", "sc"]
    with pytest.raises(InputError, match="instruction"):
        instruct.describe_pair(ScriptedVLM(vlm), source, edited, "  ")
