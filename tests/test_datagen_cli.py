"""The data-pipeline CLI in a subprocess: a run killed with SIGKILL and resumed redoes no finished
item; a corrupt image and an unreadable VLM reply land in the failure log and the run completes;
two processes under torchrun split the items."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from contextedit.nodes.datagen.pipeline import STAGES
from contextedit.nodes.datagen.runner import read_failures
from datagen_common import SIZES, write_images

SCRIPT = str(Path(__file__).resolve().parent / "datagen_script.py")


def launch(cache, call_log, args, env_extra=None, prefix=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([*prefix, SCRIPT, str(cache), str(call_log), *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def outputs(out):
    """{relative path: (inode, mtime_ns)} of every stage record and generated image."""
    found = {}
    for stage in STAGES:
        for path in sorted((out / stage).rglob("*")) if (out / stage).is_dir() else []:
            if path.is_file():
                stat = path.stat()
                found[str(path.relative_to(out))] = (stat.st_ino, stat.st_mtime_ns)
    return found


def calls(call_log):
    return Path(call_log).read_text().split("\n")[:-1] if Path(call_log).exists() else []


def test_killed_run_resumes_without_redoing_finished_items(generated_dir, tmp_path):
    images = write_images(tmp_path / "images")
    out = tmp_path / "run"
    args = ["all", "--images", str(images), "--out", str(out)]
    first_log = tmp_path / "calls1.txt"
    proc = launch(generated_dir, first_log, args, {"DATAGEN_SLOW": "0.3"}, prefix=(sys.executable,))
    deadline = time.time() + 400
    while time.time() < deadline and len(list((out / "ground").glob("*.json"))) < 1 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = outputs(out)
    assert any(k.startswith("caption/") for k in before) and not (out / "export").exists(), proc.stdout.read()[-2000:]
    second_log = tmp_path / "calls2.txt"
    resumed = launch(generated_dir, second_log, args, prefix=(sys.executable,))
    text, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, text[-3000:]
    after = outputs(out)
    for path, stamp in before.items():  # nothing finished before the kill was written again
        assert after[path] == stamp, path
    done_before = {k.split("/")[1].removesuffix(".json") for k in before if k.startswith("caption/") and k.endswith(".json")}
    size_of = {f"{w}x{h}": item for item, (w, h) in SIZES.items()}
    recaptioned = {size_of[c.split()[1]] for c in calls(second_log) if c.startswith("caption ")}
    assert recaptioned == set(SIZES) - done_before
    assert "already done" in text and (out / "export" / "pairs.jsonl").is_file()
    for item in SIZES:
        assert (out / "score" / f"{item}.json").is_file()


def test_corrupt_image_and_unreadable_reply_are_logged_and_the_run_completes(generated_dir, tmp_path):
    images = write_images(tmp_path / "images")
    (images / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    out = tmp_path / "run"
    proc = launch(generated_dir, tmp_path / "calls.txt", ["all", "--images", str(images), "--out", str(out)],
                  {"DATAGEN_UNREADABLE_GROUND": "80x64"}, prefix=(sys.executable,))
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 3, text[-3000:]  # completed, with failures
    caption_failures = read_failures(out, "caption")
    assert [(f["item"], f["stage"]) for f in caption_failures] == [("d", "caption")]
    assert caption_failures[0]["error"] in ("UnidentifiedImageError", "OSError", "SyntaxError")
    ground_failures = read_failures(out, "ground")
    assert [(f["item"], f["error"]) for f in ground_failures] == [("b", "PlanParseError")]
    assert "no JSON edit entries" in ground_failures[0]["message"]
    # the other items went all the way through
    assert sorted(p.stem for p in (out / "score").glob("*.json")) == ["a", "c"]
    rows = [json.loads(line) for line in (out / "export" / "pairs.jsonl").read_text().splitlines()]
    assert {r["source_id"] for r in rows} == {"a", "c"}


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun not installed next to the interpreter")
def test_two_processes_split_the_items(generated_dir, tmp_path):
    """`all` under torchrun: every stage's items split over both processes, each item done once,
    stages separated by a barrier (stage N+1 sees what the other process finished), one export."""
    images = write_images(tmp_path / "images")
    out = tmp_path / "run"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = launch(generated_dir, tmp_path / "calls.txt",
                  ["all", "--images", str(images), "--out", str(out), "--device", "cpu"],
                  prefix=(torchrun, "--nproc_per_node", "2", "--master_port", "29561"))
    text, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, text[-3000:]
    for stage in STAGES:
        assert sorted(p.stem for p in (out / stage).glob("*.json")) == sorted(SIZES), stage
    made = calls(tmp_path / "calls.txt")
    size_of = {f"{w}x{h}": item for item, (w, h) in SIZES.items()}
    for kind in ("caption", "ground"):  # one call per item, whichever process made it
        assert sorted(size_of[c.split()[1]] for c in made if c.split()[0] == kind) == sorted(SIZES), kind
    pairs = sum(len(json.loads((out / "score" / f"{i}.json").read_text())["pairs"]) for i in SIZES)
    assert sum(c.startswith("rewrite ") for c in made) == pairs  # every pair rewritten exactly once
    assert text.count("export: ") == 1 and (out / "export" / "pairs.jsonl").is_file()
    assert not (out / "failures").exists() or not any((out / "failures").iterdir())
