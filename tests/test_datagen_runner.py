"""The stage loop (nodes/datagen/runner.py): skip-if-exists, failure log, seeds, --limit, sharding."""

import json

import pytest
from contextedit.nodes.datagen import runner


def test_shard_limit_then_split_covers_every_item_once():
    ids = [f"img{i:02d}" for i in range(10)][::-1]
    assert runner.shard(ids) == sorted(ids)
    assert runner.shard(ids, limit=4) == ["img00", "img01", "img02", "img03"]
    parts = [runner.shard(ids, limit=7, rank=r, world=3) for r in range(3)]
    assert parts[0] == ["img00", "img03", "img06"] and parts[1] == ["img01", "img04"]
    assert sorted(i for part in parts for i in part) == sorted(ids)[:7]
    with pytest.raises(ValueError, match="limit"):
        runner.shard(ids, limit=-1)


def test_rank_and_world_come_from_the_launcher_environment():
    assert runner.dist_rank_world({}) == (0, 1)
    assert runner.dist_rank_world({"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        runner.dist_rank_world({"RANK": "4", "WORLD_SIZE": "4"})


def test_item_seed_is_fixed_by_stage_and_item_only():
    a = runner.item_seed(0, "inpaint", "cat")
    assert a == runner.item_seed(0, "inpaint", "cat") and 0 <= a < 2 ** 31
    assert len({a, runner.item_seed(1, "inpaint", "cat"), runner.item_seed(0, "caption", "cat"),
                runner.item_seed(0, "inpaint", "dog")}) == 4


def test_failures_are_logged_and_the_run_goes_on_then_resumes(tmp_path):
    seen = []

    def process(item, seed):
        seen.append(item)
        if item == "b":
            raise OSError("cannot identify image file 'b.png'")
        return {"id": item, "seed": seed}

    out = tmp_path / "run"

    def run(**kw):
        return runner.run_stage("caption", ["c", "a", "b"], lambda i: out / "caption" / f"{i}.json", process, out,
                                seed=5, progress=False, log=None, **kw)

    report = run(rank=0, world=1)
    assert report.done == ["a", "c"] and report.failed == ["b"] and seen == ["a", "b", "c"]
    assert json.loads((out / "caption" / "a.json").read_text()) == {"id": "a", "seed": runner.item_seed(5, "caption", "a")}
    failures = runner.read_failures(out, "caption")
    assert [(f["item"], f["error"]) for f in failures] == [("b", "OSError")] and "b.png" in failures[0]["message"]
    # second run: finished items are skipped, the failed one is tried again (and fails again)
    seen.clear()
    report = run(rank=0, world=1)
    assert report.skipped == ["a", "c"] and seen == ["b"] and len(runner.read_failures(out, "caption")) == 2
    # a record the validator refuses is a failure too, and nothing is written for it
    out2 = tmp_path / "run2"

    def refuse(record):
        raise ValueError("bad record")

    report = runner.run_stage("caption", ["a"], lambda i: out2 / f"{i}.json", lambda i, s: {}, out2,
                              validate=refuse, progress=False, log=None, rank=1, world=2)
    assert report.done == [] and not (out2 / "a.json").exists()  # rank 1 of 2 has no item of ["a"]
    report = runner.run_stage("caption", ["a"], lambda i: out2 / f"{i}.json", lambda i, s: {}, out2,
                              validate=refuse, progress=False, log=None, rank=0, world=2)
    assert report.failed == ["a"] and not (out2 / "a.json").exists()
    assert (out2 / "failures" / "caption.rank0.jsonl").is_file()
