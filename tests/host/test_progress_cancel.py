"""Edit Metrics and Rewrite Edit Instruction report progress through ComfyUI's ProgressBar and stop
on Cancel within one pair / one generated token (in-process: the interrupt flag is set from the
progress hook, exactly between two units of work), and the next run works."""

import shutil

import pytest
import torch
from fixtures.tiny_metrics import make_tiny_metric_models
from fixtures.tiny_models import make_tiny_qwen2_vl
from host.inprocess import import_comfy, pack_module

VLM = "tiny-qwen2.5-vl"


def out(result):
    return result.args if hasattr(result, "args") else result.result


@pytest.fixture(scope="module")
def folders(comfyui_root, generated_dir, tmp_path_factory):
    import_comfy(comfyui_root)
    import folder_paths

    pack_module(comfyui_root, "nodes.model_folders").register_model_folders()
    llm = tmp_path_factory.mktemp("cancel_models") / "LLM"
    shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"), llm / VLM)
    folder_paths.add_model_folder_path("LLM", str(llm))
    folder_paths.add_model_folder_path("metrics", str(make_tiny_metric_models(generated_dir)))


def interrupt_at(value):
    import comfy.model_management as mm

    def fn(done, _total):
        if done == value:
            mm.interrupt_current_processing(True)
    return fn


def test_edit_metrics_progress_per_pair_and_cancel_within_one_pair(comfyui_root, folders, progress_hook):
    import comfy.model_management as mm

    node = pack_module(comfyui_root, "nodes.metrics.node")
    suites = pack_module(comfyui_root, "nodes.metrics.suites")
    pairs = []
    real_compute = suites.compute

    def counting_compute(*args, **kwargs):
        pairs.append(args[0])
        return real_compute(*args, **kwargs)

    src = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    edited = src.flip(2)
    kwargs = {"source": src, "edited": edited, "metric_set": "All (PIE-Bench + MagicBrush + Emu Edit)",
              "source_caption": "a car", "target_caption": "a red car"}
    calls = progress_hook(interrupt_at(3))
    suites.compute, saved = counting_compute, suites.compute
    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            node.EditMetrics.execute(**kwargs)
        # PIE-Bench's 2 pairs (0, 1, done: 2), then MagicBrush's first pair (2 again, done: 3)
        assert [v for v, _ in calls] == [0, 1, 2, 2, 3] and calls[-1][1] == 6  # 3 sets x 2 pairs
        assert pairs == ["pie", "pie", "magicbrush"]  # the flag came after that pair: no fourth one started

        mm.interrupt_current_processing(False)
        calls.clear(), pairs.clear()
        progress_hook(lambda done, total: None)
        with torch.inference_mode():  # one set, to keep the test short; the run above covered three
            table, _json, _plot = out(node.EditMetrics.execute(**dict(kwargs, metric_set="PIE-Bench")))
    finally:
        suites.compute = saved
    assert "| Structure distance (x10^3) |" in table and pairs == ["pie", "pie"]
    assert calls == [(0, 2), (1, 2), (2, 2)]  # before each pair and after the last


def test_rewrite_progress_per_token_and_cancel_within_one_token(comfyui_root, folders, progress_hook, monkeypatch):
    import comfy.model_management as mm

    ex = pack_module(comfyui_root, "nodes.executability.node")
    datagen = pack_module(comfyui_root, "nodes.datagen.node")
    instruct = pack_module(comfyui_root, "nodes.datagen.instruct")
    with torch.inference_mode():
        (vlm,) = out(ex.LoadVLM.execute(model_name=VLM, dtype="auto"))
    tokens = []
    model = vlm.engine.model
    hook = model.register_forward_hook(lambda *_: tokens.append(1))  # one forward per generated token
    image = torch.rand(1, 56, 56, 3, generator=torch.Generator().manual_seed(2))
    kwargs = {"vlm": vlm, "source": image, "edited": image.flip(2), "instruction": "remove the car",
              "task_type": "remove", "score": True, "threshold": 6.0}
    # shorter replies than the node's (256 / 128 tokens) keep the test quick on CPU; same code path
    monkeypatch.setattr(instruct, "REWRITE_MAX_NEW_TOKENS", 12)
    monkeypatch.setattr(instruct, "SCORE_MAX_NEW_TOKENS", 6)
    total = 12 + 2 * 6
    try:
        calls = progress_hook(interrupt_at(3))
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            datagen.RewriteEditInstruction.execute(**kwargs)
        assert [v for v, _ in calls] == [1, 2, 3] and calls[-1][1] == total
        assert len(tokens) == 3  # stopped in the stopping criteria after the third token: no fourth forward

        mm.interrupt_current_processing(False)
        calls.clear(), tokens.clear()
        progress_hook(lambda done, t: None)
        with torch.inference_mode():
            result = out(datagen.RewriteEditInstruction.execute(**kwargs))
    finally:
        hook.remove()
    assert "simple: remove the car" in result[5]
    values = [v for v, _ in calls]
    # the whole run, counted up to the total; the tiny model never writes an end token (its budgets
    # are used up) nor JSON (the unreadable first score reply skips the second call)
    assert values == sorted(values) and values[-1] == total and len(tokens) == 12 + 6
