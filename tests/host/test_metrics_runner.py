"""The benchmark runner against a real ComfyUI server: tiny PIE-Bench and MagicBrush folders (3
samples, masks written by our RLE encoder / as RGBA), a LoadImage -> ImageInvert -> SaveImage
workflow, resume after a killed run, a failing sample that is listed while the run completes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from contextedit.nodes.metrics import runner
from contextedit.nodes.metrics.datasets import load_rgb
from fixtures.tiny_benchmarks import make_tiny_magicbrush, make_tiny_pie
from fixtures.tiny_metrics import make_tiny_metric_models

REPO = Path(__file__).resolve().parents[2]
INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_wf") / "invert.json"
    path.write_text(json.dumps(INVERT))
    return path


def rows_of(out):
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def args(server, workflow, data, out, *extra):
    return ["--server", server.url, "--workflow", str(workflow), "--data", str(data), "--out", str(out), *extra]


def history_count(server):
    return len(server._get("/history").json())


def test_pie_folder_runs_scores_and_summarises(comfy_server, workflow, tmp_path, generated_dir):
    data = make_tiny_pie(tmp_path / "pie")
    out = tmp_path / "out"
    models = make_tiny_metric_models(generated_dir)
    assert runner.main(args(comfy_server, workflow, data, out, "--metrics", "pixel,pie", "--models", str(models))) == 0
    rows = rows_of(out)
    assert sorted(r["id"] for r in rows) == sorted(json.loads((data / "mapping_file.json").read_text()))
    mapping = json.loads((data / "mapping_file.json").read_text())
    for row in rows:
        src = load_rgb(str(data / "annotation_images" / mapping[row["id"]]["image_path"]))
        result = load_rgb(str(out / row["output"]))
        # the workflow's result: 1 - x in float, saved by SaveImage, which truncates 255 * y (so -1 at most)
        assert np.abs(result.astype(int) - (255 - src.astype(int))).max() <= 1
        # L1 from the definition on the two files (float32 mean of 12k terms: 1e-6 relative)
        assert float(row["pixel.l1"]) == pytest.approx(np.abs(src / 255.0 - result / 255.0).mean(), rel=1e-6)
        assert np.isfinite(float(row["pie.structure_distance"])) and np.isfinite(float(row["pie.lpips_bg"]))
    summary = (out / "summary.md").read_text()
    assert "| 0 random | 1 |" in summary and "| 9 change style | 1 |" in summary and "paper: DirectInversion+P2P" in summary
    assert (out / "plots" / "pie_psnr_bg.png").is_file() and (out / "plots" / "pixel_l1.png").is_file()
    assert json.loads((out / "run.json").read_text())["ran"] == 3


def test_a_failing_sample_is_listed_and_the_run_completes(comfy_server, workflow, tmp_path):
    data = make_tiny_pie(tmp_path / "pie", corrupt=(1,))
    out = tmp_path / "out"
    assert runner.main(args(comfy_server, workflow, data, out, "--metrics", "pixel")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["ran"] == 2 and run["failed"] == 1
    bad = "100000000000"
    assert [r["id"] for r in rows_of(out)] == ["000000000000", "200000000000"]
    with open(out / "failures.csv", newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [f["id"] for f in failures] == [bad] and failures[0]["error"]
    assert f"- {bad}:" in (out / "summary.md").read_text()


def test_resume_after_a_killed_run_redoes_nothing(comfy_server, workflow, tmp_path, generated_dir):
    data = make_tiny_magicbrush(tmp_path / "mb")
    out = tmp_path / "out"
    models = make_tiny_metric_models(generated_dir)
    cmd = [sys.executable, str(REPO / "nodes" / "metrics" / "runner.py"),
           *args(comfy_server, workflow, data, out, "--metrics", "magicbrush,pixel", "--models", str(models))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.csv").is_file() and len(rows_of(out)) >= 1:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the process leads its own session: only it and its children
    finally:
        proc.wait(timeout=30)
    done_before = {r["id"] for r in rows_of(out)}
    assert 1 <= len(done_before) < 3, f"the kill should land mid-run (rows: {done_before})"

    before = history_count(comfy_server)
    assert runner.main(args(comfy_server, workflow, data, out, "--metrics", "magicbrush,pixel",
                            "--models", str(models))) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["skipped_done"] == len(done_before) and run["ran"] == 3 - len(done_before)
    assert history_count(comfy_server) == before + run["ran"]  # only the missing samples were queued
    ids = [r["id"] for r in rows_of(out)]
    assert sorted(ids) == ["101_1", "101_2", "202_1"] and len(set(ids)) == 3

    before = history_count(comfy_server)
    assert runner.main(args(comfy_server, workflow, data, out, "--metrics", "magicbrush,pixel",
                            "--models", str(models))) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["ran"] == 0 and run["skipped_done"] == 3 and history_count(comfy_server) == before
    # MagicBrush compares against the ground-truth output: an inverted image is far from it
    assert all(float(r["magicbrush.l1"]) > 0.1 for r in rows_of(out))
