"""Foreign models through the pack's own load path (ManagedModel.load -> ComfyUI's load_models_gpu),
in-process, with ComfyUI's memory manager told that only part of the model fits on the compute
device: every tensor ends on one device, the VLM / SAM / region predictor / metric networks still
run, and ComfyUI's dtype flags and its "Unload models" reach them.

The ``meta`` device stands in for the GPU (CPU-only machines): ComfyUI's device query, free-memory
query and VRAM state are patched so it treats ``meta`` as a card of a chosen size, on which the
models it has loaded take their share. A tensor moved to ``meta`` loses its values, so a model
that lands there whole is checked for placement only; one that runs on the CPU is run.
"""

import gc
import logging
import shutil
import weakref

import pytest
import torch
from fixtures.tiny_metrics import make_tiny_metric_models
from fixtures.tiny_models import (
    make_tiny_clip_vision,
    make_tiny_qwen2_vl,
    make_tiny_sam_checkpoint,
    make_tiny_t5_encoder,
)
from host.inprocess import import_comfy, pack_module

META, CPU = torch.device("meta"), torch.device("cpu")
VLM, SAM, CLIP_FILE, T5, HEAD = "tiny-qwen2.5-vl", "sam_tiny.pth", "tiny-clip-vision.safetensors", "tiny-t5", "head.safetensors"
TINY_HEAD = {"d_model": 32, "num_heads": 2, "mlp_hidden": 32, "sem_hidden": 32}
INSTRUCTION = "make the car red"


def out(result):
    return result.args if hasattr(result, "args") else result.result


def image(h=72, w=96):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def mm(comfyui_root):
    return import_comfy(comfyui_root).model_management


@pytest.fixture(scope="module")
def folders(comfyui_root, generated_dir, tmp_path_factory):
    import_comfy(comfyui_root)
    import folder_paths

    pack_module(comfyui_root, "nodes.model_folders").register_model_folders()
    root = tmp_path_factory.mktemp("managed_models")
    dirs = {k: root / k for k in ("LLM", "sams", "clip_vision", "text_encoders", "contextedit")}
    for d in dirs.values():
        d.mkdir()
    shutil.copytree(make_tiny_qwen2_vl(generated_dir, family="qwen2_5_vl"), dirs["LLM"] / VLM)
    shutil.copy(make_tiny_sam_checkpoint(generated_dir), dirs["sams"] / SAM)
    clip = make_tiny_clip_vision(generated_dir)
    shutil.copy(clip.single_file, dirs["clip_vision"] / CLIP_FILE)
    shutil.copy(clip.folder / "config.json", dirs["clip_vision"] / CLIP_FILE.replace(".safetensors", ".json"))
    shutil.copytree(make_tiny_t5_encoder(generated_dir), dirs["text_encoders"] / T5)
    encoders = pack_module(comfyui_root, "nodes.regions.encoders")
    objective = pack_module(comfyui_root, "nodes.regions.objective")
    model = pack_module(comfyui_root, "nodes.regions.model")
    enc = objective.RegionEncoders(encoders.ClipVisionEncoder.load(clip.folder),
                                   encoders.T5InstructionEncoder.load(dirs["text_encoders"] / T5))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model.RegionPredictor(enc.predictor_config(**TINY_HEAD)).save(dirs["contextedit"] / HEAD)
    dirs["metrics"] = make_tiny_metric_models(generated_dir)
    for kind, path in dirs.items():
        folder_paths.add_model_folder_path(kind, str(path))
    return dirs


@pytest.fixture(scope="module")
def nodes(comfyui_root, folders):
    return {name: pack_module(comfyui_root, f"nodes.{name}.node")
            for name in ("executability", "masks", "regions", "metrics")}


@pytest.fixture
def fake_gpu(mm, monkeypatch):
    """ComfyUI sees ``meta`` as its compute device, a card of ``card['bytes']``; what ComfyUI has
    loaded there is taken off its free memory, as on a real card."""
    card = {"bytes": 0}
    real_free = mm.get_free_memory

    def get_free_memory(dev=None, torch_free_too=False):
        dev = META if dev is None else dev
        if getattr(dev, "type", None) != "meta":
            return real_free(dev, torch_free_too)
        used = sum(m.model_loaded_memory() for m in mm.current_loaded_models if m.device == META)
        free = card["bytes"] - used
        return (free, 0) if torch_free_too else free

    monkeypatch.setattr(mm, "get_free_memory", get_free_memory)
    monkeypatch.setattr(mm, "get_torch_device", lambda: META)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NORMAL_VRAM)

    def free_for_weights(nbytes):  # ComfyUI keeps minimum_inference_memory() free for activations
        card["bytes"] = mm.minimum_inference_memory() + nbytes

    yield free_for_weights
    # models left on meta hold no values: drop them from ComfyUI's list without moving them back
    mm.current_loaded_models[:] = [m for m in mm.current_loaded_models if m.device != META]


def devices_of(module):
    return {t.device for t in list(module.parameters()) + list(module.buffers())}


def cpu_warnings(caplog, kind):
    return [r for r in caplog.records if r.name == "ContextEdit" and r.levelno == logging.WARNING
            and "runs whole on the CPU" in r.getMessage() and f"the {kind} model" in r.getMessage()]


def loaded_entries(mm, managed):
    return [m for m in mm.current_loaded_models if m.model is managed.patcher]


# ---- each kind: load it, then run it (through the nodes), and a CPU reference without ComfyUI ----
def load_and_run_vlm(nodes, folders):
    ex = nodes["executability"]
    with torch.inference_mode():
        (managed,) = out(ex.LoadVLM.execute(model_name=VLM, dtype="auto"))
    runtime = pack_module(None, "nodes.executability.vlm_runtime")
    checker = pack_module(None, "nodes.executability.checker")

    def run():
        with torch.inference_mode():
            (plans, *_rest) = out(ex.CheckInstructions.execute(image=image(), instructions=INSTRUCTION, vlm=managed,
                                                               max_new_tokens=8))
        return plans[0].raw_reply

    def reference():
        with torch.inference_mode():
            vlm = runtime.load_vlm(folders["LLM"] / VLM, device="cpu", dtype=torch.float32)
            return checker.check_batch(vlm, image(), INSTRUCTION, max_new_tokens=8)[0].raw_reply

    return managed, run, reference


def load_and_run_sam(nodes, folders):
    ex, masks = nodes["executability"], nodes["masks"]
    with torch.inference_mode():
        (managed,) = out(masks.LoadSAM.execute(sam_name=SAM))
        (plan, *_rest) = out(ex.ManualPlan.execute(image=image(), instructions=INSTRUCTION, boxes="[[10, 8, 70, 50]]",
                                                   non_executable=""))

    def run():
        with torch.inference_mode():
            return out(masks.DecodeMasks.execute(image=image(), plan=plan, dilate=0, feather=0, sam=managed))[0]

    def reference():
        sam = pack_module(None, "nodes.masks.sam")
        decode = pack_module(None, "nodes.masks.decode")
        with torch.inference_mode():
            return decode.decode_batch(image(), plan, sam=sam.load_sam(folders["sams"] / SAM))[0]

    return managed, run, reference


def load_and_run_regions(nodes, folders):
    regions = nodes["regions"]
    with torch.inference_mode():
        (managed,) = out(regions.LoadRegionPredictor.execute(region_predictor=HEAD, clip_vision=CLIP_FILE,
                                                             text_encoder=T5))

    def run():
        with torch.inference_mode():
            return out(regions.PredictEditRegion.execute(image=image(), region_predictor=managed,
                                                         instruction=INSTRUCTION, threshold=0.5, test_time_steps=0,
                                                         learning_rate=1e-2, seed=0))[0]

    def reference():
        encoders = pack_module(None, "nodes.regions.encoders")
        inference = pack_module(None, "nodes.regions.inference")
        model = pack_module(None, "nodes.regions.model")
        models = inference.RegionModels(encoders.ClipVisionEncoder.load(folders["clip_vision"] / CLIP_FILE),
                                        encoders.T5InstructionEncoder.load(folders["text_encoders"] / T5),
                                        predictor=model.RegionPredictor.load(folders["contextedit"] / HEAD))
        with torch.inference_mode():
            return inference.predict_masks(models, image(), INSTRUCTION).soft

    return managed, run, reference


REFERENCES = {}  # kind -> the CPU result without ComfyUI (computed once)
KINDS = {"vlm": load_and_run_vlm, "sam": load_and_run_sam, "region_predictor": load_and_run_regions}


@pytest.mark.parametrize("fraction", [0.5, 0.9])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_model_that_only_partly_fits_runs_whole_on_the_cpu(mm, nodes, folders, fake_gpu, caplog, kind, fraction):
    managed, run, reference = KINDS[kind](nodes, folders)
    fake_gpu(fraction * managed.patcher.model_size())
    caplog.set_level(logging.INFO)
    result = run()  # before the fix: part of the weights on meta, part on the CPU, and this raised
    tensors = devices_of(managed.patcher.model)
    assert tensors == {CPU}, f"{kind} split across {tensors}"
    assert not loaded_entries(mm, managed)  # ComfyUI does not count it as on the card
    assert len(cpu_warnings(caplog, kind)) == 1, caplog.text
    if kind not in REFERENCES:
        REFERENCES[kind] = reference()
    expected = REFERENCES[kind]
    if isinstance(expected, str):
        assert result == expected
    else:  # the same CPU ops on the same weights: equal up to float32 rounding (torch's default tolerance)
        torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_model_that_fits_loads_whole_on_the_card(mm, nodes, folders, fake_gpu, caplog, kind):
    managed, _run, _reference = KINDS[kind](nodes, folders)
    fake_gpu(2 * managed.patcher.model_size())
    caplog.set_level(logging.INFO)
    managed.load()
    assert devices_of(managed.patcher.model) == {META}
    assert loaded_entries(mm, managed) and not cpu_warnings(caplog, kind)


def test_comfyui_unloads_other_models_to_make_room(mm, nodes, folders, fake_gpu, caplog):
    import comfy.model_patcher

    managed, _run, _reference = load_and_run_sam(nodes, folders)
    size = managed.patcher.model_size()
    # another model on the card: (load and offload device meta, so unloading it keeps no values)
    side = int((0.8 * size / 4) ** 0.5)
    resident = comfy.model_patcher.ModelPatcher(torch.nn.Sequential(torch.nn.Linear(side, side, bias=False, device=META)),
                                                load_device=META, offload_device=META)
    fake_gpu(3 * size)
    mm.load_models_gpu([resident])
    assert resident.loaded_size() == resident.model_size() > 0.7 * size
    fake_gpu(1.5 * size)  # with the resident there, only about 0.7 x our size is free
    caplog.set_level(logging.INFO)
    managed.load()
    assert devices_of(managed.patcher.model) == {META}
    assert loaded_entries(mm, managed) and not cpu_warnings(caplog, "sam")
    assert resident.loaded_size() == 0  # ComfyUI moved the other model's weights off the card


def test_with_novram_a_model_runs_whole_on_the_cpu(mm, nodes, folders, fake_gpu, monkeypatch, caplog):
    """--novram: ComfyUI streams its own models layer by layer; ours cannot be streamed, so the CPU."""
    managed, run, reference = load_and_run_sam(nodes, folders)
    fake_gpu(10 * managed.patcher.model_size())
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    caplog.set_level(logging.INFO)
    result = run()
    assert devices_of(managed.patcher.model) == {CPU} and not loaded_entries(mm, managed)
    assert len(cpu_warnings(caplog, "sam")) == 1 and "--novram" in caplog.text
    if "sam" not in REFERENCES:
        REFERENCES["sam"] = reference()
    torch.testing.assert_close(result, REFERENCES["sam"])  # same CPU ops, same weights: float32 rounding


def test_metric_networks_that_only_partly_fit_run_on_the_cpu_and_are_not_kept(mm, nodes, folders, fake_gpu,
                                                                                caplog):
    """Each network is put whole on the CPU (the card is half the smallest one), the scores equal the
    engine's on the CPU, and the networks ComfyUI does not hold leave the pack's cache."""
    metrics_models = pack_module(None, "nodes.metrics.models")
    suites = pack_module(None, "nodes.metrics.suites")
    report = pack_module(None, "nodes.metrics.report")
    metrics_models.clear_cache()
    sizes = [sum(t.nbytes for t in metrics_models.MetricModels.from_dirs([folders["metrics"]]).get(n).state_dict().values())
             for n in ("dino_b8", "lpips")] + [
        sum(t.nbytes for t in metrics_models.MetricModels.from_dirs([folders["metrics"]]).get("clip_l14").model.state_dict().values())]
    metrics_models.clear_cache()
    fake_gpu(0.5 * min(sizes))
    caplog.set_level(logging.INFO)
    src = (image() * 255).round() / 255
    edited = src.flip(1)
    with torch.inference_mode():
        table, _json, _plot = out(nodes["metrics"].EditMetrics.execute(
            source=src, edited=edited, metric_set="PIE-Bench", source_caption="a car", target_caption="a red car"))
    assert len([r for r in caplog.records if "runs whole on the CPU" in r.getMessage()]) == 3, caplog.text
    assert not metrics_models._CACHE  # nothing outside ComfyUI's list is kept after the run
    src8, edited8 = ((x[0].numpy() * 255).round().astype("uint8") for x in (src, edited))
    expected = report.to_table({"pie": suites.compute("pie", src8, edited8, metrics_models.MetricModels.from_dirs(
        [folders["metrics"]]), source_caption="a car", target_caption="a red car")})
    assert table == expected
    metrics_models.clear_cache()


def test_unload_models_empties_the_metric_networks_cache(mm, nodes, folders):
    """ComfyUI's unload (what POST /free with unload_models runs) takes the networks out of the
    pack's cache, so their memory is freed; before, the cache kept them for the process's life."""
    metrics_models = pack_module(None, "nodes.metrics.models")
    metrics_models.clear_cache()
    src = image()
    with torch.inference_mode():
        out(nodes["metrics"].EditMetrics.execute(source=src, edited=src.flip(1), metric_set="PIE-Bench",
                                                 source_caption="a car", target_caption="a red car"))
    networks = {k[0]: weakref.ref(v) for k, v in metrics_models._CACHE.items() if k[0] != "managed"}
    assert sorted(networks) == ["clip_l14", "dino_b8", "lpips"]  # the cache was used
    mm.unload_all_models()
    assert not metrics_models._CACHE
    gc.collect()
    assert [name for name, ref in networks.items() if ref() is not None] == []  # nothing else holds them


# ---- dtype: ComfyUI's flags and per-device choice ----------------------------------------------
@pytest.fixture
def comfy_dtype_state(mm, monkeypatch):
    """Flags off, and ComfyUI's per-device answers under the test's control (device 'meta')."""
    for flag in ("fp8_e4m3fn_text_enc", "fp8_e5m2_text_enc", "fp16_text_enc", "bf16_text_enc", "fp32_text_enc",
                 "force_fp16"):
        monkeypatch.setattr(mm.args, flag, False)
    answers = {"bf16": False, "fp16": False}
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, **kw: device.type == "meta" and answers["bf16"])
    monkeypatch.setattr(mm, "should_use_fp16", lambda device=None, **kw: device.type == "meta" and answers["fp16"])
    return answers


@pytest.mark.parametrize("flag, dtype", [("bf16_text_enc", torch.bfloat16), ("fp16_text_enc", torch.float16),
                                         ("fp32_text_enc", torch.float32)])
def test_vlm_auto_dtype_follows_the_text_encoder_flags(mm, nodes, monkeypatch, comfy_dtype_state, flag, dtype):
    monkeypatch.setattr(mm.args, flag, True)
    ex = nodes["executability"]
    with torch.inference_mode():
        (managed,) = out(ex.LoadVLM.execute(model_name=VLM, dtype="auto"))
        assert managed.engine.dtype == dtype  # before: fp32 on the CPU whatever the flag
        (plans, *_rest) = out(ex.CheckInstructions.execute(image=image(), instructions=INSTRUCTION, vlm=managed,
                                                           max_new_tokens=4))
        assert plans[0].raw_reply is not None  # it computes in that dtype (on the CPU here)
        # an explicit choice on the node still wins
        (fp32,) = out(ex.LoadVLM.execute(model_name=VLM, dtype="fp32"))
    assert fp32.engine.dtype == torch.float32


def test_dtype_without_flags_is_comfyuis_choice_for_the_device(mm, comfy_dtype_state, monkeypatch, caplog):
    managed = pack_module(None, "nodes.managed")
    assert managed.compute_dtype("vlm", "cpu") == torch.float32  # ComfyUI's CPU answer: fp32
    comfy_dtype_state.update(bf16=True, fp16=True)  # a card that computes in both (Ampere and later)
    assert managed.compute_dtype("vlm", META) == torch.bfloat16
    monkeypatch.setattr(mm.args, "force_fp16", True)
    assert managed.compute_dtype("vlm", META) == torch.float16
    monkeypatch.setattr(mm.args, "force_fp16", False)
    comfy_dtype_state.update(bf16=False)  # fp16 only (Turing)
    assert managed.compute_dtype("vlm", META) == torch.float16
    comfy_dtype_state.update(fp16=False)  # --force-fp32, or a card ComfyUI keeps in fp32
    assert managed.compute_dtype("vlm", META) == torch.float32
    # fp8 is a storage format for ComfyUI's casting layers: ignored for a plain module, with a log line
    comfy_dtype_state.update(bf16=True, fp16=True)
    monkeypatch.setattr(mm.args, "fp8_e4m3fn_text_enc", True)
    caplog.set_level(logging.INFO)
    assert managed.compute_dtype("vlm", META) == torch.bfloat16
    assert any("cannot compute in" in r.getMessage() for r in caplog.records)
    # the kinds that only compute in fp32 stay there, whatever ComfyUI would allow
    monkeypatch.setattr(mm.args, "bf16_text_enc", True)
    for kind in ("sam", "region_predictor", "metrics:clip_l14"):
        assert managed.compute_dtype(kind, META) == torch.float32


def test_managed_model_casts_to_its_kinds_dtype(mm):
    managed = pack_module(None, "nodes.managed")
    half = torch.nn.Linear(4, 4).to(torch.bfloat16)
    model = managed.ManagedModel(object(), half, "sam")
    assert half.weight.dtype == torch.float32 and model.dtype == torch.float32
