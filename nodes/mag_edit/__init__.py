"""MAG-Edit: inversion (DDIM / direct / null-text), the MAG optimisation loop, blending.

Engine modules (denoiser, inversion, prompts, mag) are plain torch; comfy_denoiser and node
import ComfyUI lazily / at node level only."""
