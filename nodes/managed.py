"""Foreign models (transformers, segment-anything, ...) under ComfyUI's memory manager.

ComfyUI's ModelPatcher writes bookkeeping attributes onto the module it manages (``device``,
``model_loaded_weight_memory``, ...). Hugging Face and segment-anything models expose ``device``
as a read-only property, so they cannot be managed directly; :class:`ModuleHolder` holds one as a
submodule and takes those attributes instead. :class:`ManagedModel` is what flows along a custom
link (CONTEXTEDIT_VLM, CONTEXTEDIT_SAM, ...): the engine object plus its ModelPatcher. ComfyUI is
imported inside the functions, which only node.py files call.

Whole on one device, never split
--------------------------------
These modules are built from plain torch layers, not ComfyUI's weight-casting ops, so ComfyUI's
low-VRAM (partial) load would leave some layers on the offload device and the forward would fail
("Tensor on device cpu is not on the expected device cuda:0"). :meth:`ManagedModel.load` asks
ComfyUI to unload other models until this one fits whole, then loads it fully (nothing is
unloaded for a model that could not fit anyway); when it cannot fit even then (or ComfyUI runs with ``--novram``) the model runs
whole on the CPU, with one log line saying so.

Dtype: ComfyUI's choice for the kind of model, on its compute device
--------------------------------------------------------------------
Our modules compute in the dtype their weights are stored in (no casting layers), so the dtype
is chosen for the device the model computes on (:func:`compute_dtype`):

================  ===========================  ==================================================
kind              ComfyUI flags that apply     dtypes its code computes in (first usable wins)
================  ===========================  ==================================================
vlm               text-encoder flags           bf16, fp16, fp32
region_predictor  none                         fp32 (test-time mode backpropagates through CLIP)
sam               none                         fp32 (SamPredictor builds float32 prompt tensors)
metrics:*         none                         fp32 (the benchmarks' own code scores in fp32)
================  ===========================  ==================================================

A text-encoder flag (``--fp32-text-enc``, ``--bf16-text-enc``, ``--fp16-text-enc``) picks the dtype
through ``model_management.text_encoder_dtype``, as for ComfyUI's own text encoders and CLIP vision
(the fp8 flags are a storage format for ComfyUI's casting layers, which these modules lack: they
are logged and ignored). Without one, the first listed dtype that ComfyUI's
``should_use_bf16(device)`` / ``should_use_fp16(device)`` accept wins, the rule ``vae_dtype`` applies
to ComfyUI's own models that also compute in their storage dtype; those functions honour
``--force-fp32``, ``--force-fp16`` (fp16 first) and ``--cpu``, and give fp32 on the CPU.
A model that falls back to the CPU keeps its dtype (casting there would double its memory).

"Unload models"
---------------
ComfyUI's unload (``POST /free`` with ``unload_models``) detaches every model it has loaded; an
``on_unload`` callback given to :class:`ManagedModel` runs then (and when the model falls back to the
CPU, outside ComfyUI's list), so a module-level cache (the metric networks',
nodes/metrics/models.py) lets go of the model too. The other managed models are held only by
ComfyUI's own output cache, like its checkpoints.
"""

import logging
import weakref

import torch

log = logging.getLogger("ContextEdit")

FP32 = (torch.float32,)
# kind (the part before ':') -> (ComfyUI's text-encoder dtype flags apply, dtypes the code computes in)
DTYPE_RULES = {
    "vlm": (True, (torch.bfloat16, torch.float16, torch.float32)),
    "region_predictor": (False, FP32),
    "sam": (False, FP32),
    "metrics": (False, FP32),
}
TEXT_ENCODER_FLAGS = ("fp8_e4m3fn_text_enc", "fp8_e5m2_text_enc", "fp16_text_enc", "bf16_text_enc", "fp32_text_enc")


class ModuleHolder(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.device = next((p.device for p in inner.parameters()), torch.device("cpu"))

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def devices():
    """(load device, offload device) as ComfyUI chooses them."""
    import comfy.model_management as mm

    return mm.get_torch_device(), mm.unet_offload_device()


def tensor_devices(module: torch.nn.Module) -> set:
    """The devices holding ``module``'s parameters and buffers (one, unless it is split)."""
    return {t.device for t in list(module.parameters()) + list(module.buffers())}


def _flagged_text_encoder_dtype(mm, device):
    if any(getattr(mm.args, name, False) for name in TEXT_ENCODER_FLAGS):
        return mm.text_encoder_dtype(device)
    return None


def compute_dtype(kind: str, device=None) -> torch.dtype:
    """The dtype ComfyUI's rules give a model of ``kind`` computing on ``device`` (default: ComfyUI's
    compute device); see the table in the module docstring."""
    import comfy.model_management as mm

    text_flags, dtypes = DTYPE_RULES[kind.split(":", 1)[0]]
    device = mm.get_torch_device() if device is None else torch.device(device)
    if text_flags:
        flagged = _flagged_text_encoder_dtype(mm, device)
        if flagged in dtypes:
            return flagged
        if flagged is not None:
            log.info("ContextEdit: the text-encoder flag asks for %s, which the %s model cannot compute in "
                     "(no ComfyUI casting layers); choosing from %s instead.", flagged, kind,
                     ", ".join(str(d).replace("torch.", "") for d in dtypes))
    if getattr(mm.args, "force_fp16", False) and torch.float16 in dtypes and mm.should_use_fp16(device):
        return torch.float16
    for dtype in dtypes:
        if dtype == torch.bfloat16 and mm.should_use_bf16(device):
            return dtype
        if dtype == torch.float16 and mm.should_use_fp16(device):
            return dtype
        if dtype == torch.float32:
            return dtype
    return torch.float32


def _keep_while_listed(patcher) -> None:
    """Keep ``patcher`` (and its module) alive while ComfyUI's entry for it lives. ComfyUI unloads
    inside a loop over its list of loaded models; if an ``on_unload`` callback dropped the last
    reference there, the entry's finalizer would remove it from that list mid-loop."""
    import comfy.model_management as mm

    for entry in list(mm.current_loaded_models):
        if entry.model is patcher:
            weakref.finalize(entry, _release, patcher)


def _release(_patcher) -> None:
    """Nothing to do: dropping the argument is the point (see _keep_while_listed)."""


def _size(n) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


class ManagedModel:
    """An engine object whose ``module`` ComfyUI may load to the GPU and offload again.

    ``dtype``: what the module computes in (default :func:`compute_dtype` of ``kind`` on ComfyUI's
    compute device); floating weights in another dtype are cast once here. ``on_unload()`` runs
    when ComfyUI unloads the model completely (Unload models, or to make room for another), and
    when the model runs on the CPU outside ComfyUI's list: a cache given it never holds a model
    that ComfyUI's "Unload models" cannot reach."""

    def __init__(self, engine, module: torch.nn.Module, kind: str, dtype=None, on_unload=None):
        import comfy.model_patcher
        from comfy.patcher_extension import CallbacksMP

        load_device, offload_device = devices()
        self.engine = engine
        self.kind = kind
        self.dtype = dtype or compute_dtype(kind, load_device)
        if any(p.is_floating_point() and p.dtype != self.dtype for p in module.parameters()):
            module.to(self.dtype)
        self.patcher = comfy.model_patcher.ModelPatcher(ModuleHolder(module), load_device=load_device,
                                                        offload_device=offload_device)
        self._on_unload = on_unload
        self._on_cpu = False  # running on the CPU because it did not fit (logged once per fallback)
        if on_unload is not None:
            def unloaded(patcher, unpatch_all):
                if unpatch_all:
                    _keep_while_listed(patcher)
                    on_unload()

            self.patcher.add_callback(CallbacksMP.ON_DETACH, unloaded)

    def load(self):
        """Put the whole model on ComfyUI's compute device, after ComfyUI unloaded other models to
        make room; or, if it cannot fit there even then, whole on the CPU (one log line says so).
        Never split across devices. Returns the engine object."""
        import comfy.model_management as mm

        device = self.patcher.load_device
        if mm.is_device_cpu(device):
            mm.load_models_gpu([self.patcher], force_full_load=True)
        elif mm.vram_state == mm.VRAMState.NO_VRAM:
            self._run_on_cpu(mm, "ComfyUI runs with --novram, and this model cannot be streamed to the GPU "
                                 "layer by layer")
        else:
            short = self._make_room(mm, device)
            if short is None:
                mm.load_models_gpu([self.patcher], force_full_load=True)
                self._on_cpu = False
            else:
                self._run_on_cpu(mm, short)
        where = tensor_devices(self.patcher.model)
        if len(where) > 1:
            raise RuntimeError(f"ContextEdit: the {self.kind} model ended up split across {sorted(map(str, where))}; "
                               "it only runs whole on one device. Please report this.")
        return self.engine

    def _loaded_entries(self, mm):
        return [m for m in mm.current_loaded_models if m.model is self.patcher]

    def _make_room(self, mm, device):
        """None when the whole model fits on ``device`` once ComfyUI has unloaded other models (it
        does so here); else why not. Nothing is unloaded for a model that could not fit anyway."""
        size = self.patcher.model_size()
        ours = self._loaded_entries(mm)
        on_device = self.patcher.loaded_size() if ours else 0
        reserve = mm.minimum_inference_memory()
        others = sum(m.model_loaded_memory() for m in mm.current_loaded_models
                     if m.device == device and m.model is not None and m.model is not self.patcher)
        if mm.get_free_memory(device) + others + on_device - reserve >= size:
            mm.free_memory((size - on_device) * 1.1 + reserve, device, keep_loaded=ours)
        usable = mm.get_free_memory(device) + on_device - reserve
        if size <= usable:
            return None
        return (f"it needs {_size(size)} and {_size(max(usable, 0))} of {device} is usable (other models "
                "unloaded where that helps)")

    def _run_on_cpu(self, mm, reason):
        cpu = torch.device("cpu")
        for entry in self._loaded_entries(mm):  # a partial load ComfyUI made earlier: take it back whole
            mm.current_loaded_models.remove(entry)
            entry.model_unload()
        holder = self.patcher.model
        if tensor_devices(holder) != {cpu}:
            holder.to(cpu)
        holder.device = cpu
        if not self._on_cpu:
            self._on_cpu = True
            log.warning("ContextEdit: the %s model runs whole on the CPU in %s (slower): %s.", self.kind,
                        str(self.dtype).replace("torch.", ""), reason)
            if self._on_unload is not None:
                self._on_unload()
