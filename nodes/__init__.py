"""One folder per capability (a node.py that talks to ComfyUI, plus the plain-Python engine it
calls). Only ``nodes/*/node.py`` import ``comfy`` / ``comfy_api``."""
