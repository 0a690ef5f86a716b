"""The Attention Mask node through the real server (InstructPix2Pix, DualCFGGuider): an all-ones
mask leaves the sampled image exactly as it was, an all-zeros mask changes it."""

import numpy as np
from PIL import Image

from host.graphs import ip2p_graph


def add_patch(g, mask_value, instruction, size=(128, 96)):
    """Insert ContextEditAttentionMask between the checkpoint and the guider/scheduler."""
    w, h = size
    mask = g.add("SolidMask", value=mask_value, width=w, height=h)
    patch = g.add("ContextEditAttentionMask", model=g.refs["ckpt"][0], clip=g.refs["ckpt"][1], masks=mask[0],
                  prompt=instruction, mode="logits", routing="per instruction (FoI)", resolutions="8,16,32,64",
                  start_percent=0.0, end_percent=1.0, strength=1.0, apply_to="text branch (auto)")
    g.set_input(g.refs["guider"], "model", patch[0])
    g.set_input(g.refs["scheduler"], "model", patch[0])
    return g


def run_image(server, graph):
    entry = server.run(graph, timeout=600)
    ref = server.output_images(entry)[0]
    return server.get_image(**ref, as_array=True).astype(np.int16)


def test_ip2p_patch_all_ones_is_identity_all_zeros_acts(comfy_server, tiny_checkpoints):
    name = comfy_server.upload_image(Image.new("RGB", (128, 96), (90, 140, 60)), name="attn_server.png")
    instruction = "make it snowy"
    kw = dict(instruction=instruction, steps=3, seed=7, text_cfg=30.0, image_cfg=1.5)
    plain = run_image(comfy_server, ip2p_graph(tiny_checkpoints.ip2p_name, name, prefix="plain", **kw))
    ones = run_image(comfy_server, add_patch(ip2p_graph(tiny_checkpoints.ip2p_name, name, prefix="ones", **kw),
                                             1.0, instruction))
    zeros = run_image(comfy_server, add_patch(ip2p_graph(tiny_checkpoints.ip2p_name, name, prefix="zeros", **kw),
                                              0.0, instruction))
    assert np.abs(ones - plain).max() <= 1  # PNG rounding only
    assert np.abs(zeros - plain).max() > 1  # the patch acts (text removed everywhere)
