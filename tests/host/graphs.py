"""API-format graph builders for host tests.

An :class:`ApiGraph` is the dict ``POST /prompt`` takes (``{id: {"class_type", "inputs"}}``);
``add`` returns a :class:`Ref` whose ``ref[i]`` is the ``[node_id, i]`` link to output ``i``.
Builders name their important nodes in ``graph.refs`` so other tests can splice in nodes, e.g.
a ContextEdit MODEL patch between the checkpoint and the sampler::

    g = txt2img_graph(ckpt)
    patch = g.add("ContextEditSomething", model=g.refs["ckpt"][0], ...)
    g.set_input(g.refs["sampler"], "model", patch[0])
"""

import copy


class Ref(str):
    """A node id; ``ref[i]`` is the link to its output ``i``."""

    def __getitem__(self, index):
        if isinstance(index, int):
            return [str(self), index]
        return str.__getitem__(self, index)


class ApiGraph(dict):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.refs = {}

    def add(self, class_type, *, name=None, node_id=None, **inputs):
        ref = Ref(node_id if node_id is not None else str(self._next_id()))
        if ref in self:
            raise ValueError(f"node id {ref} already used")
        self[ref] = {"class_type": class_type, "inputs": dict(inputs)}
        if name:
            self.refs[name] = ref
        return ref

    def set_input(self, ref, input_name, value):
        self[str(ref)]["inputs"][input_name] = value
        return self

    def copy(self):
        g = ApiGraph(copy.deepcopy(dict(self)))
        g.refs = dict(self.refs)
        return g

    def _next_id(self):
        ids = [int(k) for k in self if str(k).isdigit()]
        return max(ids, default=0) + 1


def redirect(graph, old, new):
    """Point every input linked to ``old`` (a ``[node_id, slot]`` link) at ``new`` instead."""
    for node in graph.values():
        for name, value in node["inputs"].items():
            if value == list(old):
                node["inputs"][name] = list(new)
    return graph


def txt2img_graph(ckpt_name, positive="a photo of a cat", negative="blurry", width=64, height=64,
                  steps=2, seed=0, cfg=7.0, sampler_name="euler", scheduler="normal",
                  batch_size=1, prefix="contextedit_txt2img"):
    """CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode -> SaveImage.

    refs: ckpt, positive, negative, latent, sampler, decode, save.
    """
    g = ApiGraph()
    ckpt = g.add("CheckpointLoaderSimple", name="ckpt", ckpt_name=ckpt_name)
    pos = g.add("CLIPTextEncode", name="positive", text=positive, clip=ckpt[1])
    neg = g.add("CLIPTextEncode", name="negative", text=negative, clip=ckpt[1])
    latent = g.add("EmptyLatentImage", name="latent", width=width, height=height, batch_size=batch_size)
    sampler = g.add("KSampler", name="sampler", model=ckpt[0], positive=pos[0], negative=neg[0],
                    latent_image=latent[0], seed=seed, steps=steps, cfg=cfg,
                    sampler_name=sampler_name, scheduler=scheduler, denoise=1.0)
    decode = g.add("VAEDecode", name="decode", samples=sampler[0], vae=ckpt[2])
    g.add("SaveImage", name="save", images=decode[0], filename_prefix=prefix)
    return g


def ip2p_graph(ckpt_name, image_name, instruction="make it snowy", negative="", steps=2, seed=0,
               text_cfg=7.5, image_cfg=1.5, sampler_name="euler", scheduler="normal",
               prefix="contextedit_ip2p"):
    """InstructPix2Pix with three-way guidance (notes/comfy_core_api.md, InstructPix2Pix).

    LoadImage -> InstructPixToPixConditioning -> DualCFGGuider(cond1 = ip2p positive,
    cond2 = ip2p negative, negative = plain negative) -> SamplerCustomAdvanced(RandomNoise,
    KSamplerSelect, BasicScheduler) -> VAEDecode -> SaveImage.

    refs: ckpt, image, positive, negative, ip2p, guider, noise, sampler_select, scheduler,
    sampler, decode, save. ``image_name`` is what ComfyServer.upload_image returned.
    """
    g = ApiGraph()
    ckpt = g.add("CheckpointLoaderSimple", name="ckpt", ckpt_name=ckpt_name)
    image = g.add("LoadImage", name="image", image=image_name)
    pos = g.add("CLIPTextEncode", name="positive", text=instruction, clip=ckpt[1])
    neg = g.add("CLIPTextEncode", name="negative", text=negative, clip=ckpt[1])
    ip2p = g.add("InstructPixToPixConditioning", name="ip2p", positive=pos[0], negative=neg[0],
                 vae=ckpt[2], pixels=image[0])
    guider = g.add("DualCFGGuider", name="guider", model=ckpt[0], cond1=ip2p[0], cond2=ip2p[1],
                   negative=neg[0], cfg_conds=text_cfg, cfg_cond2_negative=image_cfg, style="regular")
    noise = g.add("RandomNoise", name="noise", noise_seed=seed)
    select = g.add("KSamplerSelect", name="sampler_select", sampler_name=sampler_name)
    sched = g.add("BasicScheduler", name="scheduler", model=ckpt[0], scheduler=scheduler,
                  steps=steps, denoise=1.0)
    sampler = g.add("SamplerCustomAdvanced", name="sampler", noise=noise[0], guider=guider[0],
                    sampler=select[0], sigmas=sched[0], latent_image=ip2p[2])
    decode = g.add("VAEDecode", name="decode", samples=sampler[0], vae=ckpt[2])
    g.add("SaveImage", name="save", images=decode[0], filename_prefix=prefix)
    return g
