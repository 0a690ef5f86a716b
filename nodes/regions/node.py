"""ContextEdit Load Region Predictor / Predict Edit Region nodes (ComfyUI V3 schema).

The learnable-region predictor of "Beyond Editing Pairs" (nodes/regions/): the loader puts the
frozen encoders and the trained head into one module under ComfyUI's memory manager; the
predictor node converts ComfyUI types and calls the engine (inference.py). Generation in the
region is ComfyUI's own masked sampling: SetLatentNoiseMask + KSampler at denoise 1.0 generates the
region from noise and puts the source latent, noised to the current step, back outside it at every
step (appendix A, eq. 22-23); workflows/region_edit.json takes t_e from the VLM plan.
"""

from comfy_api.latest import io

from ..errors import InputError
from ..managed import ManagedModel, devices
from ..model_folders import MODEL_FOLDERS, check_model, combo_options, list_hf_folders, list_models, resolve_model
from .encoders import ClipTextEncoder, ClipVisionEncoder, T5InstructionEncoder
from .inference import RegionModels, predict_masks
from .losses import LossWeights
from .model import RegionPredictor
from .objective import DEFAULT_TEST_TIME_LR, DEFAULT_TEST_TIME_STEPS

RegionPredictorType = io.Custom("CONTEXTEDIT_REGION_PREDICTOR")
CATEGORY = "ContextEdit/regions"
NO_PREDICTOR = "none (test-time mode)"
NO_CLIP_TEXT = "none"
KIND = "region_predictor"
TEXT_ENCODER_KINDS = ("text_encoders", "LLM")
T5_EXPECTED = ("a FLAN-T5 Hugging Face folder (config.json, tokenizer files, *.safetensors), e.g. "
               "models/text_encoders/flan-t5-base")
CLIP_TEXT_KINDS = ("clip_vision", "text_encoders")
CLIP_TEXT_EXPECTED = MODEL_FOLDERS["clip_vision"].expected + " as a Hugging Face folder with the text tower and tokenizer"
# node input -> what it weighs (eq. 10/11 of "Beyond Editing Pairs"); defaults are LossWeights'
LOSS_WEIGHT_INPUTS = {
    "alpha": "alpha of eq. 11: weight of L_semAlign",
    "beta": "beta of eq. 11: weight of L_CLIP",
    "lambda_g": "lambda_g of eq. 10: weight of the CLIP guidance term (eq. 7)",
    "lambda_d": "lambda_d of eq. 10: weight of the CLIP directional term (eq. 8)",
    "lambda_s": "lambda_s of eq. 10: weight of the structural term (eq. 9, mean over patch pairs)",
}


def _unique(names):
    return list(dict.fromkeys(names))


def _safe_list(fn, kind):
    try:
        return list(fn(kind))
    except Exception:  # noqa: BLE001 - a folder ComfyUI does not know lists nothing
        return []


def clip_vision_options():
    return combo_options("clip_vision", _unique(_safe_list(list_models, "clip_vision")
                                                + _safe_list(list_hf_folders, "clip_vision")))


def text_encoder_options():
    return combo_options(TEXT_ENCODER_KINDS, _unique(_safe_list(list_hf_folders, "text_encoders")
                                                     + _safe_list(list_hf_folders, "LLM")))


def clip_text_options():
    return [NO_CLIP_TEXT] + _unique(_safe_list(list_hf_folders, "clip_vision")
                                    + _safe_list(list_hf_folders, "text_encoders"))


class LoadRegionPredictor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        vision, t5 = clip_vision_options(), text_encoder_options()  # defaults: the frontend shows no "undefined"
        return io.Schema(
            node_id="ContextEditLoadRegionPredictor",
            display_name="ContextEdit Load Region Predictor",
            category=CATEGORY,
            description=(
                "Loads the learnable edit-region predictor (\"Beyond Editing Pairs\"): a trained head from "
                "models/contextedit plus the frozen encoders it reads, CLIP vision (models/clip_vision) and the "
                "FLAN-T5 instruction encoder (models/text_encoders or models/LLM). Without a checkpoint, ContextEdit "
                "Predict Edit Region fits a fresh head to each image (test-time mode), which also needs a CLIP text "
                "model. Managed by ComfyUI's memory manager."
            ),
            inputs=[
                io.Combo.Input("region_predictor", options=[NO_PREDICTOR] + _safe_list(list_models, "contextedit"),
                               default=NO_PREDICTOR,
                               tooltip="A region-predictor checkpoint (*.safetensors, written by nodes/regions/train.py) "
                                       "in models/contextedit, or 'none' for test-time mode."),
                io.Combo.Input("clip_vision", options=vision, default=vision[0],
                               tooltip="The CLIP vision model the predictor was trained with (e.g. "
                                       "clip_vit_large_patch14.safetensors, or a Hugging Face CLIP folder)."),
                io.Combo.Input("text_encoder", options=t5, default=t5[0],
                               tooltip="The FLAN-T5 instruction encoder: a Hugging Face folder (e.g. flan-t5-base) in "
                                       "models/text_encoders or models/LLM."),
                io.Combo.Input("clip_text", options=clip_text_options(), default=NO_CLIP_TEXT, optional=True,
                               tooltip="CLIP text model (a Hugging Face CLIP folder with tokenizer, the same CLIP as "
                                       "clip_vision). Needed only in test-time mode (for L_CLIP)."),
            ],
            outputs=[RegionPredictorType.Output(display_name="region_predictor",
                                                tooltip="Encoders and head, for ContextEdit Predict Edit Region.")],
        )

    @classmethod
    def validate_inputs(cls, region_predictor, clip_vision, text_encoder, clip_text=NO_CLIP_TEXT):
        # Naming the inputs here replaces ComfyUI's "Value not in list" with the pack's errors (folders
        # searched, where to download, how to train a head). ComfyUI files the answer under each
        # input named, so the answer names every model that is missing.
        checks = [("region_predictor", region_predictor, "contextedit", None, NO_PREDICTOR),
                  ("clip_vision", clip_vision, "clip_vision", None, None),
                  ("text_encoder", text_encoder, TEXT_ENCODER_KINDS, T5_EXPECTED, None),
                  ("clip_text", clip_text, CLIP_TEXT_KINDS, CLIP_TEXT_EXPECTED, NO_CLIP_TEXT)]
        problems = []
        for input_name, value, kinds, expected, off in checks:
            if off is not None and value == off:
                continue
            verdict = check_model(kinds, value, expected=expected)
            if verdict is not True:
                problems.append(f"Input '{input_name}': {verdict}")
        return "\n".join(problems) or True

    @classmethod
    def execute(cls, region_predictor, clip_vision, text_encoder, clip_text=NO_CLIP_TEXT) -> io.NodeOutput:
        _, offload_device = devices()
        predictor = None
        if region_predictor and region_predictor != NO_PREDICTOR:
            predictor = RegionPredictor.load(resolve_model("contextedit", region_predictor), input_name="region_predictor")
        vision = ClipVisionEncoder.load(resolve_model("clip_vision", clip_vision), input_name="clip_vision")
        instruction = T5InstructionEncoder.load(resolve_model(TEXT_ENCODER_KINDS, text_encoder, expected=T5_EXPECTED),
                                                input_name="text_encoder")
        text = None
        if clip_text and clip_text != NO_CLIP_TEXT:
            text = ClipTextEncoder.load(resolve_model(CLIP_TEXT_KINDS, clip_text, expected=CLIP_TEXT_EXPECTED),
                                        input_name="clip_text")
        models = RegionModels(vision, instruction, text, predictor)
        models.check()
        models.to(offload_device)
        return io.NodeOutput(ManagedModel(models, models, KIND))


class PredictEditRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContextEditPredictEditRegion",
            display_name="ContextEdit Predict Edit Region",
            category=CATEGORY,
            description=(
                "Predicts where an instruction should change the image (learnable edit regions): a soft map, "
                "a binary mask at the image size and an overlay. Feed the mask to Set Latent Noise Mask + KSampler "
                "(denoise 1.0, the paper's inference) to edit only there. test_time_steps 0 uses the trained "
                "checkpoint; > 0 (or no checkpoint) fits a fresh head to this image with the training losses, "
                "which needs an edited image (e.g. a global edit with the target caption) and the source/target "
                "captions."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The image(s) to edit (at least 32 px on each side)."),
                RegionPredictorType.Input("region_predictor", tooltip="From ContextEdit Load Region Predictor."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="The edit instruction, e.g. 'make the car red' (one for the whole batch)."),
                io.Float.Input("threshold", default=0.5, min=0.01, max=0.99, step=0.01,
                               tooltip="Edit probability at or above which a pixel is in the binary mask."),
                io.Int.Input("test_time_steps", default=0, min=0, max=2000,
                             tooltip="0: use the trained checkpoint. > 0: fit a fresh head on this image for this many "
                                     "Adam steps (test-time mode; required when no checkpoint is loaded). "
                                     f"{DEFAULT_TEST_TIME_STEPS} steps at the default learning rate localise the "
                                     "edit in the pack's tests."),
                io.Float.Input("learning_rate", default=DEFAULT_TEST_TIME_LR, min=0.000001, max=1.0, step=0.00001,
                               round=0.000001,
                               tooltip="Adam learning rate of test-time mode (higher rates can saturate the region "
                                       "into all or nothing)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the fresh head's initial weights (test-time mode); kept as set "
                                     "between runs (no 'control after generate')."),
                io.Image.Input("edited", optional=True,
                               tooltip="Test-time mode: the image edited everywhere (G(X, t_e), e.g. img2img or "
                                       "InstructPix2Pix with the target caption); one, or one per image."),
                io.String.Input("source_caption", multiline=True, default="", optional=True,
                                tooltip="Test-time mode: a description of the image as it is (t_o)."),
                io.String.Input("target_caption", multiline=True, default="", optional=True,
                                tooltip="Test-time mode: a description of the image after the edit (t_e)."),
                *[io.Float.Input(name, default=getattr(LossWeights(), name), min=0.0, max=100.0, step=0.01,
                                 round=0.0001, optional=True, tooltip=f"Test-time mode loss weight: {what}.")
                  for name, what in LOSS_WEIGHT_INPUTS.items()],
            ],
            outputs=[
                io.Mask.Output(display_name="soft_mask", tooltip="Edit probability per pixel (0..1), at the image size."),
                io.Mask.Output(display_name="mask", tooltip="Binary edit region (soft_mask >= threshold), at the image "
                                                            "size: connect it to Set Latent Noise Mask."),
                io.Image.Output(display_name="overlay", tooltip="The image with the binary region tinted red."),
            ],
        )

    @classmethod
    def execute(cls, image, region_predictor, instruction, threshold, test_time_steps, learning_rate, seed,
                edited=None, source_caption="", target_caption="", alpha=None, beta=None, lambda_g=None,
                lambda_d=None, lambda_s=None) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        if not isinstance(region_predictor, ManagedModel) or region_predictor.kind != KIND:
            raise InputError("region_predictor", f"is a {type(region_predictor).__name__}, not a region predictor.",
                             "Connect ContextEdit Load Region Predictor.")
        models = region_predictor.load()
        pbar = None
        if models.predictor is None or test_time_steps > 0:
            pbar = comfy.utils.ProgressBar(max(1, int(test_time_steps)) * int(getattr(image, "shape", [1])[0]))

        def on_step(done, total):
            mm.throw_exception_if_processing_interrupted()
            if pbar is not None:
                pbar.update_absolute(done, total)

        given = {"alpha": alpha, "beta": beta, "lambda_g": lambda_g, "lambda_d": lambda_d, "lambda_s": lambda_s}
        weights = LossWeights(**{k: float(v) for k, v in given.items() if v is not None})  # absent: the default
        for name, value in weights.as_dict().items():
            if not value >= 0.0:
                raise InputError(name, f"must be a non-negative loss weight, got {value!r}.", "Use e.g. "
                                 f"{getattr(LossWeights(), name)} (the default).")
        result = predict_masks(models, image, instruction, threshold=threshold, steps=int(test_time_steps),
                               lr=float(learning_rate), seed=int(seed), edited=edited,
                               source_caption=source_caption, target_caption=target_caption, weights=weights,
                               on_step=on_step)
        return io.NodeOutput(result.soft, result.mask, result.overlay)


NODES = [LoadRegionPredictor, PredictEditRegion]
