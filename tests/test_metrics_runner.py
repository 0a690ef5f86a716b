"""Runner pieces that need no server: benchmark folder readers, workflow binding, resume bookkeeping,
summary and plots. (End to end against a real ComfyUI: tests/host/test_metrics_runner.py.)"""

import csv
import json

import numpy as np
import pytest
from contextedit.nodes.metrics import runner
from contextedit.nodes.metrics.datasets import (
    Sample,
    detect_layout,
    load_magicbrush,
    load_pie,
    load_rgb,
    sample_mask,
)
from fixtures.tiny_benchmarks import box, make_tiny_magicbrush, make_tiny_pie
from PIL import Image


def test_pie_layout_reads_prompts_types_and_rle_masks(tmp_path):
    root = make_tiny_pie(tmp_path / "pie")
    samples = load_pie(str(root))
    assert detect_layout(str(root)) == "pie" and len(samples) == 3
    s = samples[1]
    assert s.source_prompt == "a cat on sofa number 1" and s.target_prompt == "a dog on sofa number 1"
    assert s.edit_type == "1 change object" and s.instruction == "turn the cat into a dog"
    mask = sample_mask(s, 64, 64)
    expected = box(seed=1)
    expected[0, :] = expected[-1, :] = expected[:, 0] = expected[:, -1] = 1  # PIE-Bench forces the border
    np.testing.assert_array_equal(mask, expected)
    assert load_rgb(s.image).shape == (64, 64, 3)


def test_magicbrush_layout_turns_captions_and_transparent_masks(tmp_path):
    root = make_tiny_magicbrush(tmp_path / "mb")
    samples = load_magicbrush(str(root))
    assert detect_layout(str(root)) == "magicbrush"
    assert [s.id for s in samples] == ["101_1", "101_2", "202_1"]
    second = samples[1]
    assert second.image.endswith("101-output1.png")  # single-turn: the turn's ground-truth input
    assert second.reference.endswith("101-output2.png") and second.edit_type == "turn 2"
    assert second.target_prompt == "a green box number 2" and samples[0].source_prompt == "a photo number 101"
    np.testing.assert_array_equal(sample_mask(second, 64, 64), box(seed=2))
    # an opaque mask is read as grey > 127 = edit region
    Image.fromarray((box(seed=1) * 255).astype(np.uint8)).save(second.mask_path)
    np.testing.assert_array_equal(sample_mask(second, 64, 64), box(seed=1))


def test_bind_writes_image_and_fields_without_touching_the_workflow():
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["3", 1]}}}
    sample = Sample(id="7", image="a.png", edit_type="0 random", target_prompt="a dog")
    graph = runner.bind(workflow, sample, {"image": "bench/7.png"}, "1", [runner.parse_set("2.text=target_prompt")])
    assert graph["1"]["inputs"]["image"] == "bench/7.png" and graph["2"]["inputs"]["text"] == "a dog"
    assert workflow["1"]["inputs"]["image"] == "x.png" and workflow["2"]["inputs"]["text"] == ""
    with pytest.raises(ValueError, match="unknown field"):
        runner.bind(workflow, sample, {"image": "i"}, "1", [("2", "text", "nope")])
    with pytest.raises(ValueError, match="node 9"):
        runner.bind(workflow, sample, {"image": "i"}, "1", [("9", "text", "id")])


def test_read_done_ignores_a_half_written_row_and_refuses_other_metrics(tmp_path):
    columns = runner.BASE_COLUMNS + runner.metric_columns(("pixel",))
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerow(["a", "t", "ok", "1.0", "images/a.png"] + ["1.0"] * (len(columns) - 5))
    with open(path, "a") as handle:
        handle.write("b,t,ok,0.5")  # a run killed mid-write
    assert list(runner.read_done(str(path), columns)) == ["a"]
    with pytest.raises(SystemExit, match="other metrics"):
        runner.read_done(str(path), runner.BASE_COLUMNS + runner.metric_columns(("pie",)))


def test_summary_groups_by_edit_type_and_draws_plots(tmp_path):
    rows = [{"id": str(i), "edit_type": t, "pixel.psnr_bg": str(v), "pixel.ssim_bg": "0.5", "pixel.mse_bg": "0.01",
             "pixel.psnr_bg_only": "nan", "pixel.l1": "0.1"}
            for i, (t, v) in enumerate([("0 random", 20.0), ("0 random", 30.0), ("9 change style", 10.0)])]
    text = runner.summarise(rows, ("pixel",), str(tmp_path), [{"id": "x", "error": "boom"}])
    assert "| 0 random | 2 | 25.00 |" in text          # mean of 20 and 30
    assert "| **all** | 3 | 20.00 |" in text
    assert "| 0 random | 2 | 25.00 | 50.00 | 100.00 | n/a | 0.1000 |" in text  # SSIM x10^2, MSE x10^4
    assert "- x: boom" in text
    plot = Image.open(tmp_path / "plots" / "pixel_psnr_bg.png")
    assert plot.size[0] > 100 and np.asarray(plot.convert("L")).std() > 0


class FakeComfy:
    """A stand-in ComfyUI HTTP API (upload, prompt, history, view, queue, interrupt) in a thread:
    prompts whose image name contains ``hang`` never finish; others 'invert' their upload."""

    def __init__(self):
        import http.server
        import threading

        fake = self
        self.uploads, self.prompts, self.cancelled = {}, {}, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body, kind="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/upload/image":
                    name = body.split(b'filename="')[1].split(b'"')[0].decode()
                    fake.uploads[name] = body.split(b"\r\n\r\n", 4)[-1].rsplit(b"\r\n--", 1)[0]
                    return self._send(200, {"name": name, "subfolder": "contextedit_bench", "type": "input"})
                payload = json.loads(body)
                if self.path == "/prompt":
                    pid = f"p{len(fake.prompts)}"
                    fake.prompts[pid] = payload["prompt"]
                    return self._send(200, {"prompt_id": pid})
                if self.path in ("/queue", "/interrupt"):
                    fake.cancelled.append((self.path, payload))
                    return self._send(200, {})
                return self._send(404, {})

            def do_GET(self):
                if self.path.startswith("/history/"):
                    pid = self.path.rsplit("/", 1)[1]
                    image = fake.prompts[pid]["1"]["inputs"]["image"]
                    if "hang" in image:
                        return self._send(200, {})
                    done = {"status": {"status_str": "success", "completed": True},
                            "outputs": {"3": {"images": [{"filename": image.split("/")[-1], "subfolder": "",
                                                          "type": "output"}]}}}
                    return self._send(200, {pid: done})
                if self.path.startswith("/view"):
                    from urllib.parse import parse_qs, urlparse

                    name = parse_qs(urlparse(self.path).query)["filename"][0]
                    import io as _io

                    src = np.asarray(Image.open(_io.BytesIO(fake.uploads[name])).convert("RGB"))
                    buf = _io.BytesIO()
                    Image.fromarray(255 - src).save(buf, format="PNG")
                    return self._send(200, buf.getvalue(), "image/png")
                return self._send(404, {})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_sample_past_its_timeout_is_cancelled_listed_and_the_run_goes_on(tmp_path):
    data = make_tiny_pie(tmp_path / "pie")
    mapping_path = data / "mapping_file.json"
    mapping = json.loads(mapping_path.read_text())
    hang_key = sorted(mapping)[1]
    mapping["hang"] = mapping.pop(hang_key)  # its upload is named hang.png: the fake never finishes it
    mapping_path.write_text(json.dumps(mapping))
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                                    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    fake = FakeComfy()
    try:
        code = runner.main(["--server", fake.url, "--workflow", str(workflow), "--data", str(data),
                            "--out", str(tmp_path / "out"), "--metrics", "pixel", "--timeout", "1"])
    finally:
        fake.close()
    assert code == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["ran"] == 2 and run["failed"] == 1
    assert run["failures"][0]["id"] == "hang" and "timed out after 1 s" in run["failures"][0]["error"]
    hung = [pid for pid, g in fake.prompts.items() if "hang" in g["1"]["inputs"]["image"]]
    assert ("/queue", {"delete": hung}) in fake.cancelled and ("/interrupt", {"prompt_id": hung[0]}) in fake.cancelled
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["id"] for r in rows) == sorted(k for k in mapping if k != "hang")


def test_summary_shows_paper_rows_only_for_the_dataset_they_were_measured_on(tmp_path, generated_dir):
    """PIE-Bench folder scored with the PIE-Bench and MagicBrush sets: the PIE-Bench paper rows (measured
    on PIE-Bench) are printed, the MagicBrush paper rows (measured on MagicBrush's test set) are not."""
    from fixtures.tiny_metrics import make_tiny_metric_models

    data = make_tiny_pie(tmp_path / "pie", n=1)
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                                    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    fake = FakeComfy()
    try:
        code = runner.main(["--server", fake.url, "--workflow", str(workflow), "--data", str(data),
                            "--out", str(tmp_path / "out"), "--metrics", "pie,magicbrush",
                            "--models", str(make_tiny_metric_models(generated_dir))])
    finally:
        fake.close()
    assert code == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    pie_part, mb_part = summary.split("## MagicBrush")
    assert "| paper: DirectInversion+P2P" in pie_part and "| paper: NTI+P2P" in pie_part
    assert "| paper:" not in mb_part  # IP2P, IP2P+MagicBrush, ... were measured on MagicBrush's test set
    assert "MagicBrush test set" in mb_part  # and the summary says where the published rows come from
