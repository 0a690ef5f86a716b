"""ContextEdit: context-aware, instruction-driven, localized image editing for ComfyUI.

ComfyUI loads this folder as a custom-node package and calls :func:`comfy_entrypoint`.
Importing the package anywhere else (tests, scripts, other packs) must not need ComfyUI, so
nothing here imports ``comfy`` / ``comfy_api`` at module level: node modules are imported by
the entrypoint only. ComfyUI owns the top-level module name ``nodes``; inside the pack every
import is relative.
"""

__version__ = "0.1.0"

# Served by ComfyUI at /extensions/<this folder's name>/: docs/<NodeId>.md are the node help pages
# the frontend's node library shows (it requests /extensions/<folder>/docs/<NodeId>.md). Registered
# here rather than with pyproject's [tool.comfy] web, which would key it by the project name and,
# in a folder named otherwise, serve (and load any JavaScript of) the folder twice. js/ holds the
# frontend extension (the plan editor and the masks view: plain JavaScript, no build step).
WEB_DIRECTORY = "./web"

# (module path relative to this package, class names) of every node the pack registers.
# Adding a node means adding it here; tests check this list against the files on disk.
NODE_MODULES = (
    (".nodes.executability.node", ("LoadVLM", "CheckInstructions", "ManualPlan")),
    (".nodes.review.node", ("ReviewPlan",)),
    (".nodes.masks.node", ("LoadSAM", "DecodeMasks")),
    (".nodes.attention.node", ("AttentionMask", "AttentionMap")),
    (".nodes.mag_edit.node", ("MagEdit",)),
    (".nodes.regions.node", ("LoadRegionPredictor", "PredictEditRegion")),
    (".nodes.metrics.node", ("EditMetrics",)),
    (".nodes.datagen.node", ("RewriteEditInstruction",)),
    (".nodes.image_stream.node", ("ImageStream",)),
)


def _load_node_classes():
    import importlib

    classes = []
    for module_name, class_names in NODE_MODULES:
        module = importlib.import_module(module_name, package=__name__)
        classes.extend(getattr(module, name) for name in class_names)
    return classes


def comfy_entrypoint():
    """Called by ComfyUI (V3 schema) when it loads custom nodes."""
    from comfy_api.latest import ComfyExtension

    from .nodes.model_folders import register_model_folders

    register_model_folders()

    class ContextEditExtension(ComfyExtension):
        async def get_node_list(self):
            return _load_node_classes()

    return ContextEditExtension()
