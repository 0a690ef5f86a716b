"""Foreign models (transformers, segment-anything, ...) under ComfyUI's memory manager.

ComfyUI's ModelPatcher writes bookkeeping attributes onto the module it manages (``device``,
``model_loaded_weight_memory``, ...). Hugging Face and segment-anything models expose ``device``
as a read-only property, so they cannot be managed directly; :class:`ModuleHolder` holds one as a
submodule and takes those attributes instead. :class:`ManagedModel` is what flows along a custom
link (CONTEXTEDIT_VLM, CONTEXTEDIT_SAM, ...): the engine object plus its ModelPatcher. ComfyUI is
imported inside the methods, which only node.py files call.
"""

import torch


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


class ManagedModel:
    """An engine object whose ``module`` ComfyUI may load to the GPU and offload again."""

    def __init__(self, engine, module: torch.nn.Module, kind: str):
        import comfy.model_patcher

        load_device, offload_device = devices()
        self.engine = engine
        self.kind = kind
        self.patcher = comfy.model_patcher.ModelPatcher(ModuleHolder(module), load_device=load_device,
                                                        offload_device=offload_device)

    def load(self):
        """Ask ComfyUI to put the weights on the compute device; returns the engine object."""
        import comfy.model_management as mm

        mm.load_models_gpu([self.patcher])
        return self.engine
