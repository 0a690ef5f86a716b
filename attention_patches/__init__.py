"""Host-agnostic attention controllers and two thin host adapters.

A *controller* sees every attention call it is attached to as an :class:`AttentionCall` (projected
q/k/v plus where and when the call happens) and returns the attention output, usually by calling
``call.attend`` (the host's own attention, or whatever another pack installed before us) on
modified inputs. Capture (attention maps), MAG-Edit's attention injection and cross-attention probe,
CAMILA's mask modulation and InsightEdit's decoupled image stream (``image_stream``) are the
controllers that exist; ComfyUI (``comfy_adapter``) and diffusers (``diffusers_adapter``) are
adapters that build the ``AttentionCall`` and route the result back. DiT joint attention (FLUX.1,
Qwen-Image) has its own grouping (``joint_attention``) and ComfyUI hook (``comfy_dit_adapter``),
since it patches one joint text+image attention, not UNet cross-attention. Only the ComfyUI
adapters import ``comfy``, and only lazily.
"""

from .capture import AttentionCapture, CapturedMap
from .controller import AttentionCall, AttentionController, LayerSelector, merge_heads, scaled_scores, split_heads
from .injection import AttentionInjection, SourceAttentionStore, SourceRecorder
from .masked_attention import MaskEdges, MaskModulation, ModulationMode, TokenRouting
from .token_ratio import CrossAttentionProbe, StopForward

__all__ = [
    "AttentionCall",
    "AttentionCapture",
    "CapturedMap",
    "AttentionController",
    "AttentionInjection",
    "CrossAttentionProbe",
    "SourceAttentionStore",
    "SourceRecorder",
    "StopForward",
    "LayerSelector",
    "MaskEdges",
    "MaskModulation",
    "ModulationMode",
    "TokenRouting",
    "merge_heads",
    "scaled_scores",
    "split_heads",
]
