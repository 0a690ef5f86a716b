"""A container that lets ComfyUI's memory manager hold foreign models (transformers, SAM).

ComfyUI's ModelPatcher writes bookkeeping attributes onto the module it manages (``device``,
``model_loaded_weight_memory``, ...). Hugging Face and segment-anything models expose ``device``
as a read-only property, so they cannot be managed directly; this plain nn.Module holds one as a
submodule and takes those attributes instead. Moving the holder moves the model.
"""

import torch


class ModuleHolder(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.device = next((p.device for p in inner.parameters()), torch.device("cpu"))

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)
