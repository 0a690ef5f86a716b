"""ContextEdit Edit Metrics node (ComfyUI V3 schema): the papers' metric sets on a (source, edited) pair.

Converts ComfyUI types (IMAGE [B, H, W, C] 0..1 -> 8-bit arrays, MASK [B, H, W]) and calls the
engine (suites.py); networks come from the ``metrics`` model folder (models.py names the files).
"""

import json

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..errors import InputError, ModelNotFoundError
from ..managed import ManagedModel, devices
from .models import MetricModels, forget, locate
from .report import json_number, plot_metrics, to_json, to_table
from .suites import SUITES, compute_batch, networks_needed

CATEGORY = "ContextEdit/metrics"
ALL = "All (PIE-Bench + MagicBrush + Emu Edit)"
SET_OPTIONS = {SUITES[k][0]: (k,) for k in ("pie", "magicbrush", "emu", "emu_crop", "pixel")}
SET_OPTIONS[ALL] = ("pie", "magicbrush", "emu")


def _images(tensor, name):
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or tensor.shape[-1] not in (3, 4):
        raise InputError(name, "is not an IMAGE [B, H, W, C].", "Connect an IMAGE output (e.g. Load Image, VAE Decode).")
    arr = tensor.detach().float().cpu().clamp(0, 1).numpy()[..., :3]
    return [np.round(a * 255.0).astype(np.uint8) for a in arr]  # 8 bits, as the benchmarks read saved files


class EditMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditEditMetrics",
            display_name="ContextEdit Edit Metrics",
            category=CATEGORY,
            description=(
                "Scores an edit with the metrics of PIE-Bench (structure distance, background PSNR/LPIPS/MSE/SSIM, "
                "CLIP similarity), MagicBrush (L1, L2, CLIP-I, DINO, CLIP-T) or Emu Edit (CLIP direction/image/output, "
                "L1, DINO), computed as the benchmarks' own code does. Outputs a markdown table, JSON and a bar plot "
                "with the papers' published values, each labelled with the dataset it was measured on and its "
                "backbones / preprocessing (comparable only when both match). Networks load from models/metrics "
                "(CLIP HF folders, DINO and SqueezeNet weights; see the README); 'Pixel' needs none."
            ),
            inputs=[
                io.Image.Input("source", tooltip="The image before the edit."),
                io.Image.Input("edited", tooltip="The edited image. PIE-Bench / Pixel: the source's size, or a "
                                                 "non-square strip whose bottom-right panel is the edit (cropped "
                                                 "as PIE-Bench's evaluate.py does; other sizes are refused). "
                                                 "Emu Edit: resized to the source; MagicBrush: to the reference."),
                io.Combo.Input("metric_set", options=list(SET_OPTIONS), default=SUITES["pie"][0],
                               tooltip="Which paper's metrics to compute. Emu Edit uses InstructPix2Pix's CLIP "
                                       "preprocessing (resize to 224x224, no crop); 'Emu Edit, centre-crop CLIP' "
                                       "the OpenAI crop most reimplementations use."),
                io.String.Input("source_caption", multiline=True, default="",
                                tooltip="Caption of the source image (Emu Edit CLIP direction needs it)."),
                io.String.Input("target_caption", multiline=True, default="",
                                tooltip="Caption / prompt of the intended result (CLIP metrics score the edit against it)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Edit region (1 = edited). PIE-Bench background metrics score outside it; "
                                      "CLIP 'edited' scores inside it. Without it the whole image is background."),
                io.Image.Input("reference", optional=True,
                               tooltip="Ground-truth edited image for MagicBrush (its metrics compare against it); "
                                       "the source is used when absent."),
            ],
            outputs=[
                io.String.Output(display_name="table", tooltip="Markdown table: our values in the papers' scales "
                                                               "beside the published ones."),
                io.String.Output(display_name="json", tooltip="All values (raw and reported scale), per image too."),
                io.Image.Output(display_name="plot", tooltip="One bar per metric, the papers' values as dashed lines."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, metric_set):
        # Checks, before anything runs, that the networks of the chosen set are in models/metrics:
        # POST /prompt answers with each missing file, the folders searched and where to download
        # it. Naming metric_set here also replaces ComfyUI's own check of the list, done first.
        import folder_paths

        if metric_set not in SET_OPTIONS:
            return f"metric_set '{metric_set}' is not offered. Pick one of {list(SET_OPTIONS)}."
        networks = sorted({n for suite in SET_OPTIONS[metric_set] for n in networks_needed(suite)})
        problems = []
        for network in networks:
            try:
                locate(network, folder_paths)
            except ModelNotFoundError as error:
                problems.append(str(error))
        return "\n".join(problems) or True

    @classmethod
    def execute(cls, source, edited, metric_set, source_caption, target_caption, mask=None,
                reference=None) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils
        import folder_paths

        if metric_set not in SET_OPTIONS:
            raise InputError("metric_set", f"'{metric_set}' is not offered.", f"Pick one of {list(SET_OPTIONS)}.")
        sources, editeds = _images(source, "source"), _images(edited, "edited")
        refs = _images(reference, "reference") if reference is not None else None
        masks = None
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise InputError("mask", "is not a MASK.", "Connect a MASK output.")
            m = mask.detach().float().cpu()
            masks = list((m.unsqueeze(0) if m.dim() == 2 else m).numpy())
        offload = devices()[1]
        models = MetricModels(folder_paths, device=offload, manager=lambda engine, module, network: ManagedModel(
            engine, module, f"metrics:{network}", on_unload=lambda: forget(engine)))
        suites = SET_OPTIONS[metric_set]
        pbar = comfy.utils.ProgressBar(len(suites))

        def on_pair(done, n, k):  # between pairs: progress over every suite's pairs, then Cancel
            pbar.update_absolute(k * n + done, n * len(suites))
            mm.throw_exception_if_processing_interrupted()

        means, per_image = {}, {}
        for k, suite in enumerate(suites):
            means[suite], per_image[suite] = compute_batch(
                suite, sources, editeds, models, masks=masks, references=refs,
                source_caption=source_caption, target_caption=target_caption,
                on_pair=lambda done, n, k=k: on_pair(done, n, k))
        table = to_table(means)
        payload = json.loads(to_json(means))
        payload["per_image"] = {suite: [{k: json_number(v) for k, v in row.items()} for row in rows]
                                for suite, rows in per_image.items()}
        plot = torch.from_numpy(plot_metrics(means).astype(np.float32) / 255.0).unsqueeze(0)
        return io.NodeOutput(table, json.dumps(payload, indent=2), plot, ui=ui.PreviewText(table))


NODES = [EditMetrics]
