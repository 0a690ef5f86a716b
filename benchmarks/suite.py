"""Every benchmark in one process, side by side: one table of best / median, goal, held / missed.

    python benchmarks/suite.py --quick [--out FILE] [--only NAME,...] [--repeats N]
                              # CPU, tiny models (< 10 min on a shared 2-core machine)
    python benchmarks/suite.py --full --out FILE
                              # CUDA, full-size random-weight architectures (< 9 min on one H100):
                              # SD1.5 / SDXL UNets at 512 / 1024 px, a FLUX.1-size DiT at 1024 px,
                              # a 3B-size Qwen2.5-VL, SAM vit_h; also seconds and peak GPU memory per stage
    python benchmarks/suite.py --check FILE.md
                              # re-read a saved table, re-decide every goal, list missing rows (exit 1 if any)

Ratios (patched / unpatched) come from runs interleaved in this one process: on a shared machine
single runs scatter by +-30 %, so two separate runs are never compared. "best" is best / best
(the least disturbed runs), "median" is median / median; held / missed is decided on the median.
Throughputs (x/s) are shown so that larger is better: best is the fastest run. A benchmark that
fails prints "error" in its rows (the message below the table) and the others still run; with
``--out`` the table is rewritten after every benchmark, so a run cut short still leaves one.
``--full-smoke`` runs the --full code paths on the CPU with tiny configs (wiring check only).

Models are random-weight and built here from configs (tests/fixtures, the other scripts' --full
paths); nothing is downloaded. ``--only`` takes the names listed by ``--list``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import math
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

COLUMNS = ("benchmark", "measure", "best", "median", "goal", "held/missed")
STATUSES = ("held", "missed", "-", "error", "skipped", "not run")
INSTRUCTIONS = "make it autumn\nadd snow"


# --------------------------------------------------------------------------- table rows
@dataclass
class Row:
    benchmark: str
    measure: str
    best: float | None = None
    median: float | None = None
    goal: str | None = None      # "<= 1.05" / ">= 10"; None = informational
    status: str = "-"
    note: str = ""

    @property
    def key(self):
        return (self.benchmark, self.measure)


def parse_goal(goal: str) -> tuple[str, float]:
    """'<= 1.05' -> ('<=', 1.05). ValueError for anything else."""
    m = re.fullmatch(r"\s*(<=|>=)\s*([0-9]*\.?[0-9]+)\s*", goal or "")
    if not m:
        raise ValueError(f"goal {goal!r} is not of the form '<= NUMBER' or '>= NUMBER'")
    return m.group(1), float(m.group(2))


def judge(median: float | None, goal: str | None) -> str:
    """held / missed for a goal (decided on the median), '-' without one."""
    if goal is None:
        return "-"
    op, bound = parse_goal(goal)
    if median is None or not math.isfinite(median):
        return "missed"
    return "held" if (median <= bound if op == "<=" else median >= bound) else "missed"


def ratio_row(benchmark, measure, num, den, goal=None, note="") -> Row:
    best = min(num) / min(den)
    median = statistics.median(num) / statistics.median(den)
    return Row(benchmark, measure, best, median, goal, judge(median, goal), note)


def value_row(benchmark, measure, values, goal=None, per_second=False, note="") -> Row:
    """Times in seconds -> best (fastest) and median; ``per_second``: shown as 1/time."""
    best, median = min(values), statistics.median(values)
    if per_second:
        best, median = 1.0 / best, 1.0 / median
    return Row(benchmark, measure, best, median, goal, judge(median, goal), note)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def format_table(rows) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r.benchmark} | {r.measure} | {_num(r.best)} | {_num(r.median)} | {r.goal or '-'} | "
                     f"{r.status} |")
    return "\n".join(lines)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_table(text: str) -> list[Row]:
    """The suite table in ``text`` (Markdown, as format_table writes it) -> rows.

    ValueError, naming the line, when there is no such table or a row is malformed."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if line.strip().startswith("|") and tuple(_cells(line)) == COLUMNS), None)
    if start is None:
        raise ValueError("no suite table found: expected a header row '| " + " | ".join(COLUMNS) + " |'")
    if start + 1 >= len(lines) or not all(re.fullmatch(r":?-{3,}:?", c) for c in _cells(lines[start + 1])):
        raise ValueError(f"line {start + 2}: expected the table's separator row '|---|---|...'")
    rows = []
    for n in range(start + 2, len(lines)):
        line = lines[n].strip()
        if not line.startswith("|"):
            break
        cells = _cells(line)
        where = f"line {n + 1} ({line!r})"
        if len(cells) != len(COLUMNS):
            raise ValueError(f"{where}: expected {len(COLUMNS)} cells, got {len(cells)}")
        benchmark, measure, best, median, goal, status = cells
        if not benchmark or not measure:
            raise ValueError(f"{where}: empty benchmark or measure")
        values = []
        for name, cell in (("best", best), ("median", median)):
            if cell == "-":
                values.append(None)
                continue
            try:
                values.append(float(cell))
            except ValueError:
                raise ValueError(f"{where}: {name} {cell!r} is not a number or '-'") from None
        goal = None if goal == "-" else goal
        if goal is not None:
            try:
                parse_goal(goal)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        if status not in STATUSES:
            raise ValueError(f"{where}: held/missed {status!r} is not one of {', '.join(STATUSES)}")
        rows.append(Row(benchmark, measure, values[0], values[1], goal, status))
    if not rows:
        raise ValueError(f"line {start + 1}: the suite table has no rows")
    keys = [r.key for r in rows]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError(f"rows repeated: {sorted(dup)}")
    return rows


@dataclass
class GoalReport:
    held: list = field(default_factory=list)          # keys (benchmark, measure)
    missed: list = field(default_factory=list)        # goal rows whose median misses (or that did not run)
    missing: list = field(default_factory=list)       # expected keys with no row
    informational: list = field(default_factory=list)
    disagree: list = field(default_factory=list)      # printed held/missed differs from the figures

    @property
    def ok(self) -> bool:
        return not (self.missed or self.missing or self.disagree)

    def summary(self) -> str:
        parts = [f"{len(self.held)} goal(s) held", f"{len(self.missed)} missed"]
        parts += [f"missed: {b} / {m}" for b, m in self.missed]
        parts += [f"missing row: {b} / {m}" for b, m in self.missing]
        parts += [f"printed status disagrees with the figures: {b} / {m}" for b, m in self.disagree]
        return "; ".join(parts)


def check_goals(rows, expected=None) -> GoalReport:
    """Re-decide every goal from the median; ``expected`` keys (benchmark, measure) with no row are
    reported missing. A goal row that errored, was skipped or has no median counts as missed."""
    report = GoalReport()
    for r in rows:
        if r.goal is None:
            report.informational.append(r.key)
            continue
        verdict = judge(r.median, r.goal) if r.status in ("held", "missed", "-") else "missed"
        (report.held if verdict == "held" else report.missed).append(r.key)
        if r.status in ("held", "missed") and r.status != verdict:
            report.disagree.append(r.key)
    have = {r.key for r in rows}
    report.missing = [tuple(k) for k in (expected or ()) if tuple(k) not in have]
    return report


# --------------------------------------------------------------------------- running
@dataclass
class Stage:
    name: str
    seconds: float
    peak_gib: float | None
    result: str


class Ctx:
    """What the benchmarks share: mode, device, repeats, the ComfyUI import, a scratch folder."""

    def __init__(self, args):
        import torch

        self.args = args
        self.full = args.full or args.full_smoke
        self.smoke = args.full_smoke
        self.device = torch.device("cuda" if args.full else "cpu")
        self.scratch = Path(tempfile.mkdtemp(prefix="contextedit_suite_"))
        self.cache = Path(os.environ.get("CONTEXTEDIT_TEST_CACHE") or self.scratch / "cache")
        self.cache.mkdir(parents=True, exist_ok=True)
        self._comfy = None
        self._tiny_sd15 = None
        self.setup = {}

    def repeats(self, default):
        return self.args.repeats or default

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn):
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def interleaved(self, runs: dict, repeats: int, warmup: dict | None = None) -> dict:
        """{name: fn} -> {name: [seconds] * repeats}, runs interleaved so a slow spell of the machine
        hits every entry alike; each fn warmed up once first (``warmup``: cheaper stand-ins)."""
        for fn in (warmup or runs).values():
            fn()
        self.sync()
        times = {k: [] for k in runs}
        for _ in range(repeats):
            for k, fn in runs.items():
                times[k].append(self.timed(fn))
        return times

    def comfy(self):
        """ComfyUI imported in-process: on the CPU (host.inprocess) for --quick and --full-smoke, on
        the GPU for --full (ComfyUI picks the device itself)."""
        if self._comfy is None:
            root = os.environ.get("COMFYUI_PATH")
            if not root or not (Path(root) / "comfy").is_dir():
                raise RuntimeError("set COMFYUI_PATH to a ComfyUI 0.8.0 checkout")
            from _common import load_pack

            load_pack()
            if self.device.type == "cuda":
                if root not in sys.path:
                    sys.path.insert(0, root)
                import folder_paths

                folder_paths.set_temp_directory(str(self.scratch / "temp"))
                folder_paths.set_output_directory(str(self.scratch / "output"))
                self._comfy = sys.modules["comfy"]
            else:
                from host.inprocess import import_comfy

                self._comfy = import_comfy(root)
        return self._comfy

    def pack(self, name):
        self.comfy()
        return importlib.import_module(f"contextedit.{name}")

    def free(self):
        import torch

        gc.collect()
        if self._comfy is not None:
            mm = self._comfy.model_management
            mm.unload_all_models()
            mm.soft_empty_cache()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextlib.contextmanager
def threads(n):
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def node_defaults(node_cls) -> dict:
    return {i.id: i.default for i in node_cls.define_schema().inputs if getattr(i, "default", None) is not None}


def _init_weights(module, seed=0):
    """Random weights that keep activations in range: N(0, 1/fan_in) matrices, unit norms, zero biases."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_((torch.randn(p.shape, generator=g) * fan_in ** -0.5).to(p.dtype)) if p.device.type == "cpu" \
                    else p.normal_(0.0, fan_in ** -0.5)
            elif name.endswith("weight"):   # norm scales
                p.fill_(1.0)
            else:
                p.zero_()


# --------------------------------------------------------------------------- attention mask (SD)
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "use_temporal_attention": False, "use_temporal_resblock": False}   # comfy/model_detection.py
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}


def random_sd(ctx, kind):
    """(MODEL, CLIP) of SD1.5 / SDXL's architecture with random weights, as a checkpoint loader gives
    them (fp16 on CUDA). ``--full-smoke``: the same classes at 32 channels, fp32 on the CPU."""
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models as sm
    import torch

    comfy = ctx.comfy()
    unet = dict(SD15_UNET if kind == "sd15" else SDXL_UNET)
    if ctx.smoke:
        unet.update(model_channels=32, transformer_depth=[0, 0, 1, 1, 1, 1][: len(unet["transformer_depth"])],
                    transformer_depth_middle=1)
        if kind == "sd15":
            unet["transformer_depth"] = [1, 1, 1, 1, 1, 1, 0, 0]
        else:
            unet.update(num_head_channels=16, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1])
    cfg = (sm.SD15 if kind == "sd15" else sm.SDXL)(unet)
    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({}, device=ctx.device)
    model.diffusion_model.to(ctx.device, dtype)
    _init_weights(model.diffusion_model, seed=1)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=ctx.device,
                                               offload_device=torch.device("cpu"))
    clip = comfy.sd.CLIP(target=cfg.clip_target(), embedding_directory=None)
    _init_weights(clip.cond_stage_model, seed=2)
    del comfy
    return patcher, clip


def attention_sd(ctx):
    """The Attention Mask node with its schema defaults vs the unpatched model, KSampler-style CFG
    sampling (euler, cfg 7) through ComfyUI, two instructions on half masks; both runs use the
    node's positive conditioning."""
    if ctx.full:
        cases = [("sd15", "attention mask SD1.5", 64, 20, 5), ("sdxl", "attention mask SDXL", 128, 20, 3)]
        if ctx.smoke:
            cases = [(k, b, 16, 2, 2) for k, b, _, _, _ in cases]
    else:
        cases = [("tiny", "attention mask SD1.5", ctx.args.sd_latent, ctx.args.sd_steps, 5)]
    rows = []
    for case in cases:
        rows.append(_attention_case(ctx, *case))
        ctx.free()   # the case's models are gone with its frame
    return rows


def _attention_case(ctx, kind, bench, side, steps, repeats):
    import torch
    from _common import half_masks

    node = ctx.pack("nodes.attention.node").AttentionMask
    comfy = ctx.comfy()
    if kind == "tiny":
        from _common import comfy_tiny_sd15

        _, _, (model, clip, _) = comfy_tiny_sd15()
        what = "tiny SD1.5 checkpoint (SD1.5 layout, 320 ch everywhere, context 768)"
    else:
        model, clip = random_sd(ctx, kind)
        size = " layout at 32 ch (smoke)" if ctx.smoke else "-size"
        what = f"{'SD1.5' if kind == 'sd15' else 'SDXL'}{size} random weights"
    defaults = node_defaults(node)
    patched, positive, _ = node.execute(model=model, clip=clip, masks=half_masks(side),
                                        **{**defaults, "prompt": INSTRUCTIONS}).args
    negative = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"), show_pbar=False)
    noise = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))

    def run(m, s=side, n=steps):
        latent = torch.zeros(1, 4, s, s)
        comfy.sample.sample(m, noise[..., :s, :s], n, 7.0, "euler", "normal", positive, negative, latent, seed=0,
                            disable_pbar=True)

    small = min(side, 16)   # warm-up: one step at a small latent (first-call costs, not the full run)
    times = ctx.interleaved({"unpatched": lambda: run(model), "patched": lambda: run(patched)},
                            ctx.repeats(repeats),
                            warmup={"unpatched": lambda: run(model, small, 1),
                                    "patched": lambda: run(patched, small, 1)})
    opts = ", ".join(f"{k}={defaults[k]}" for k in ("routing", "mode", "mask_edges", "resolutions"))
    ctx.setup[bench] = (f"{what}, ComfyUI {comfy.model_management.get_torch_device()}, latent {side}x{side} "
                        f"({side * 8} px), {steps} euler step(s), cfg 7, node defaults ({opts}), 2 instructions "
                        f"on half masks, {ctx.repeats(repeats)} interleaved runs each")
    return ratio_row(bench, "patched / unpatched", times["patched"], times["unpatched"], "<= 1.05")


# --------------------------------------------------------------------------- DiT confinement
def dit(ctx):
    """benchmarks/dit_overhead.py's measurement: confined vs unpatched on the same conditioning, and
    vs the unpatched model on a one-text stock prompt; euler at cfg 1 with a reference latent."""
    if ctx.full and not ctx.smoke:
        families, shape = ["flux"], {"side": 128, "seg_tokens": 256, "prompt_tokens": 256, "steps": 4, "repeats": 3}
    else:
        families = ["flux", "qwen_image"]
        shape = {"side": 32, "seg_tokens": 24, "prompt_tokens": 32, "steps": 8, "repeats": 9}
        if ctx.smoke:
            families, shape["repeats"] = ["flux"], 2
    rows = []
    for family in families:
        rows += _dit_family(ctx, family, **shape)
        ctx.free()
    return rows


def _dit_family(ctx, family, side, seg_tokens, prompt_tokens, steps, repeats):
    import dit_overhead
    import torch

    comfy = ctx.comfy()
    from contextedit.attention_patches.comfy_dit_adapter import DiTConfinement
    from contextedit.attention_patches.joint_attention import TextSegments

    model = dit_overhead.full_flux(ctx.device) if ctx.full and not ctx.smoke else dit_overhead.tiny(family)
    width = model.get_model_object("diffusion_model").txt_in.weight.shape[1]
    shape = (1, 16, 1, side, side) if family == "qwen_image" else (1, 16, side, side)
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(shape, generator=g)
    segs = torch.randn(1, 3 * seg_tokens, width, generator=g)
    stock = torch.randn(1, prompt_tokens, width, generator=g)
    masks = torch.zeros(2, side * 8, side * 8)
    masks[0, :, : side * 8 // 3] = 1
    masks[1, :, -side * 8 // 3:] = 1
    patched = DiTConfinement(TextSegments.from_lengths(0, [seg_tokens] * 3), masks).install(model)
    noise = torch.randn(shape, generator=g)
    extra = {"reference_latents": [ref]}
    if family == "flux":
        extra.update(pooled_output=torch.zeros(1, model.model.diffusion_model.params.vec_in_dim), guidance=3.5)

    def run(m, c, n=steps):
        cc = [[c, extra]]
        comfy.sample.sample(m, noise, n, 1.0, "euler", "simple", cc, cc, ref.clone(), seed=0, disable_pbar=True)

    runs = {"same": lambda: run(model, segs), "patched": lambda: run(patched, segs),
            "stock": lambda: run(model, stock)}
    warm = {"same": lambda: run(model, segs, 1), "patched": lambda: run(patched, segs, 1),
            "stock": lambda: run(model, stock, 1)}
    times = ctx.interleaved(runs, ctx.repeats(repeats), warmup=warm)
    name = "DiT confinement " + ("FLUX.1" if family == "flux" else "Qwen-Image")
    size = "FLUX.1-size random bf16" if ctx.full and not ctx.smoke else "tiny"
    ctx.setup[name] = (f"{size}, latent {side}x{side} + reference latent, 3 segments x {seg_tokens} tokens "
                       f"(stock prompt {prompt_tokens}), {steps} euler steps at cfg 1, "
                       f"{ctx.repeats(repeats)} interleaved runs each")
    return [ratio_row(name, "patched / unpatched (same cond)", times["patched"], times["same"], "<= 1.10"),
            ratio_row(name, "patched / stock prompt", times["patched"], times["stock"])]


# --------------------------------------------------------------------------- image stream
def image_stream(ctx):
    """benchmarks/image_stream_overhead.py's diffusers measurement: the image stream vs the UNet's own
    processors, and (Attention Mask + Image Stream) vs the Attention Mask alone, CFG pair per step."""
    import image_stream_overhead as iso
    import torch
    from _common import load_pack

    load_pack()
    from contextedit.attention_patches import MaskModulation
    from contextedit.attention_patches.diffusers_adapter import (
        DiffusersHost,
        attention_modules,
    )
    from contextedit.attention_patches.image_stream import diffusers_ip_order
    from contextedit.nodes.image_stream.ipadapter_format import from_state_dict
    from contextedit.nodes.image_stream.stream_patch import build_image_stream

    full = ctx.full and not ctx.smoke
    device = ctx.device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet, cfg = iso.build_unet(full, device, dtype)
    side, steps, repeats = (64, 20, 5) if full else (32, 10, 5)
    d = cfg["cross_attention_dim"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, side, side, generator=g).to(device, dtype)
    prompt, negative, empty = (torch.randn(1, 77, d, generator=g).to(device, dtype) for _ in range(3))
    context = torch.cat([prompt, negative])
    modules = attention_modules(unet)
    by_name = dict(modules)
    places = diffusers_ip_order(modules)
    widths = [tuple(by_name[p].to_k.weight.shape) for p in places]
    embed = 1024
    sd = {"image_proj.proj.weight": torch.randn(4 * d, embed, generator=g) * embed ** -0.5,
          "image_proj.proj.bias": torch.zeros(4 * d), "image_proj.norm.weight": torch.ones(d),
          "image_proj.norm.bias": torch.zeros(d)}
    for i, p in enumerate(places):
        sd[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = by_name[p].to_k.weight.detach().float().cpu().clone()
        sd[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = by_name[p].to_v.weight.detach().float().cpu().clone()
    stream = build_image_stream(from_state_dict(sd, "suite"), places, widths, torch.randn(1, embed, generator=g))
    masks = torch.zeros(2, side * 8, side * 8)
    masks[0, :, : side * 4] = 1
    masks[1, :, side * 4:] = 1
    camila = MaskModulation(masks, empty, token_sets=[[1, 2, 3], [4, 5]], special_tokens=[0] + list(range(6, 77)),
                            prompt_context=prompt)

    def run(controller):
        t = torch.linspace(999, 0, steps).long()
        host = DiffusersHost(unet, branches=[0, 1]).attach(controller) if controller is not None else None
        try:
            with torch.no_grad():
                y = x
                for i in range(steps):
                    eps = unet(torch.cat([y, y]), t[i].expand(2).to(device), encoder_hidden_states=context).sample
                    y = y - 0.01 * eps[:1]
        finally:
            if host is not None:
                host.detach()

    runs = {"unpatched": lambda: run(None), "stream": lambda: run(stream), "mask": lambda: run(camila),
            "both": lambda: run(iso.Stacked(stream, camila))}
    with threads(None if full else 1):
        times = ctx.interleaved(runs, ctx.repeats(repeats))
    ctx.setup["image stream"] = (f"diffusers UNet ({'SD1.5-size' if full else 'tiny'}, {dtype}), latent {side}x{side}, "
                                 f"{steps} steps on the CFG pair, IP-Adapter-format weights "
                                 f"(to_k_ip/to_v_ip = to_k/to_v), "
                                 f"{ctx.repeats(repeats)} interleaved runs each")
    return [ratio_row("image stream", "stream / unpatched", times["stream"], times["unpatched"]),
            ratio_row("image stream", "(mask + stream) / mask", times["both"], times["mask"])]


# --------------------------------------------------------------------------- MAG Edit
def mag(ctx):
    """benchmarks/mag_edit.py's measurement: each preset (with its inversion) against plain 50-step
    CFG DDIM through the same denoiser; plain and fast interleaved, paper run after them."""
    import torch
    from _common import load_pack

    load_pack()
    import image_stream_overhead as iso
    import mag_edit as mag_bench  # the scenario benchmarks/mag_edit.py times
    from contextedit.nodes.mag_edit.mag import mag_edit, preset

    full = ctx.full and not ctx.smoke
    device = ctx.device
    if full:
        unet, cfg = iso.build_unet(True, device, torch.float32)
        d, hw = cfg["cross_attention_dim"], 64
    else:
        from fixtures.tiny_mag import sd_like_unet

        unet, d, hw = sd_like_unet(seed=0).to(device), 32, 16
    den, prompts, x0, mask, plain_at = mag_bench.scenario(unet, d, hw, device)
    plain_steps = 50

    def plain():
        return plain_at(plain_steps)

    fast_cfg, paper_cfg = preset("fast"), preset("paper")
    if ctx.smoke:
        fast_cfg, paper_cfg = preset("fast", steps=4), preset("paper", steps=4)
    repeats = ctx.repeats(3 if full else 5)
    times = ctx.interleaved({"plain": plain, "fast": lambda: mag_edit(den, x0, mask, prompts, fast_cfg)}, repeats)
    paper = [ctx.timed(lambda: mag_edit(den, x0, mask, prompts, paper_cfg)) for _ in range(1)]
    ctx.setup["MAG Edit"] = (f"diffusers UNet ({'SD1.5-size 512 px' if full else 'tiny 128 px'}, fp32), plain "
                             f"{plain_steps}-step CFG DDIM vs fast ({fast_cfg.steps} steps) interleaved x {repeats}, "
                             f"paper ({paper_cfg.steps} steps) once after them; best plain "
                             f"{min(times['plain']):.2f} s, fast {min(times['fast']):.2f} s, paper {paper[0]:.2f} s")
    return [ratio_row("MAG Edit", f"fast / plain {plain_steps}-step DDIM", times["fast"], times["plain"], "<= 2.0"),
            ratio_row("MAG Edit", "paper / fast", paper, times["fast"])]


# --------------------------------------------------------------------------- region predictor
def _fit_steps(ctx):
    return 20 if ctx.full and not ctx.smoke else 10


def _fit_measure(ctx):
    return f"test-time fit s/image ({_fit_steps(ctx)} steps)"


def region(ctx):
    """benchmarks/region_predictor.py's figures plus the test-time optimisation of a fresh head."""
    import torch
    from _common import load_pack

    load_pack()
    import region_predictor as rp
    from contextedit.nodes.regions.losses import LossWeights
    from contextedit.nodes.regions.model import RegionPredictor
    from contextedit.nodes.regions.objective import (
        encode_batch,
        optimize_region,
        predict_region,
    )

    full = ctx.full and not ctx.smoke
    device = ctx.device
    if full:  # fp32: the test-time fit back-propagates through the CLIP vision tower
        enc, size, head_cfg = rp.full_encoders(device, torch.float32), 224, {}
    else:
        from regions_common import TINY_HEAD, tiny_encoders

        enc, size, head_cfg = tiny_encoders(ctx.scratch / "regions"), 64, TINY_HEAD
    b, repeats, fit_steps = 4, ctx.repeats(10 if full else 5), _fit_steps(ctx)
    with threads(None if full else 1):
        torch.manual_seed(0)
        head = RegionPredictor(enc.predictor_config(**head_cfg)).to(device).eval()
        images = torch.rand(b, 3, size, size, device=device)
        edited = torch.rand(b, 3, size, size, device=device)
        texts = ["make the red box green"] * b
        batch = encode_batch(enc, images, texts, ["a red box"] * b, ["a green box"] * b, edited)
        predict = ctx.interleaved({"e2e": lambda: predict_region(head, enc, images, texts)}, repeats)["e2e"]
        head.train().requires_grad_(True)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-4)
        weights = LossWeights()

        def step():
            from contextedit.nodes.regions.objective import region_losses

            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _, _ = region_losses(head, enc.vision, batch, weights)
            loss.backward()
            opt.step()

        train = ctx.interleaved({"step": step}, repeats)["step"]
        config = head.config if hasattr(head, "config") else None
        fit = [ctx.timed(lambda: optimize_region(enc, images[:1], texts[0], "a red box", "a green box", edited[:1],
                                                 steps=fit_steps, config=config)) for _ in range(2)]
    models = "CLIP ViT-L/14 + FLAN-T5-base encoders, d=768 head, fp32" if full else "tiny encoders and head"
    ctx.setup["region predictor"] = (f"{models}, {size}x{size}, batch {b}; test-time fit of a fresh head: {fit_steps} "
                                     f"steps on one "
                                     f"image, 2 runs")
    return [Row("region predictor", "predict ms/image", min(predict) * 1e3 / b, statistics.median(predict) * 1e3 / b),
            value_row("region predictor", "training samples/s", [t / b for t in train], per_second=True),
            value_row("region predictor", _fit_measure(ctx), fit)]


# --------------------------------------------------------------------------- executability check
def check(ctx):
    """benchmarks/check_latency.py: the check (VLM generate + parse) for three instructions."""
    import torch
    from _common import load_pack

    load_pack()
    import check_latency as cl
    from contextedit.nodes.executability.checker import check_instructions
    from contextedit.nodes.executability.vlm_runtime import load_vlm
    from fixtures.tiny_models import make_tiny_qwen2_vl

    full = ctx.full and not ctx.smoke
    work = ctx.scratch / "vlm" if full else ctx.cache
    work.mkdir(parents=True, exist_ok=True)
    folder = cl.full_size_folder(work) if full else make_tiny_qwen2_vl(work, family="qwen2_5_vl")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    vlm = load_vlm(folder, device=str(ctx.device))
    tokens_wanted, repeats, px = (128, 3, 512) if full else (32, 3, 256)
    image = (torch.rand(px, px, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    counts = []

    def run():
        seen = {"n": 0}
        plan, _ = check_instructions(vlm, image, cl.INSTRUCTIONS, max_new_tokens=tokens_wanted,
                                     on_token=lambda n, _: seen.__setitem__("n", n))
        counts.append(seen["n"])
        assert len(plan.items) == 3

    times = ctx.interleaved({"check": run}, ctx.repeats(repeats))["check"]
    n = statistics.median(counts)
    params = sum(p.numel() for p in vlm.model.parameters())
    ctx.setup["check latency"] = (f"{'Qwen2.5-VL-3B-size random bf16' if full else 'tiny Qwen2.5-VL'} "
                                  f"({params / 1e6:.2f} M parameters), {px}x{px} image, 3 instructions, "
                                  f"{n:.0f} new tokens (random weights never stop early), {len(times)} runs")
    rows = [value_row("check latency", f"check s ({n:.0f} tokens)", times, "<= 0.7" if full else None),
            value_row("check latency", "tokens/s", [t / max(n, 1) for t in times], per_second=True)]
    vlm = None   # free the weights before the folder goes
    if full:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------- SAM
def sam(ctx):
    """SAM masks from three boxes on one image (image encoder + prompt decoding), as the Box Masks
    node and the data pipeline's mask stage call it."""
    import torch
    from _common import load_pack

    load_pack()
    from contextedit.nodes.masks.sam import STANDARD_ARCHS, SamDecoder, load_sam

    full = ctx.full and not ctx.smoke
    if full:
        from segment_anything.build_sam import _build_sam

        model = _build_sam(**STANDARD_ARCHS["vit_h"].build_kwargs(), checkpoint=None)   # CPU init, then moved
        decoder = SamDecoder(model.float().eval().requires_grad_(False).to(ctx.device), arch=STANDARD_ARCHS["vit_h"])
        name = "vit_h (random weights)"
    else:
        from fixtures.tiny_models import make_tiny_sam_checkpoint

        decoder = load_sam(make_tiny_sam_checkpoint(ctx.cache), device=ctx.device)
        name = "tiny SAM"
    image = (torch.rand(512, 512, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    boxes = [[20, 30, 200, 220], [250, 40, 480, 300], [100, 300, 400, 500]]
    repeats = ctx.repeats(5)
    with threads(None if full else 1):
        times = ctx.interleaved({"sam": lambda: decoder.masks_from_boxes(image, boxes)}, repeats)["sam"]
    ctx.setup["SAM"] = f"{name}, fp32, 512x512 image (SAM resizes to 1024), 3 boxes, {repeats} runs"
    return [value_row("SAM", "masks from 3 boxes s/image", times)]


# --------------------------------------------------------------------------- metrics / datagen (tiny, CPU)
def metrics(ctx):
    """benchmarks/metrics_throughput.py: samples/s of each metric set with the tiny networks (CPU)."""
    import numpy as np
    from _common import load_pack

    load_pack()
    from contextedit.nodes.metrics.models import MetricModels
    from contextedit.nodes.metrics.suites import SUITES, compute
    from fixtures.tiny_metrics import make_tiny_metric_models

    size, samples = 256, 3
    models = MetricModels.from_dirs([make_tiny_metric_models(ctx.scratch / "metrics")])
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
              rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(samples)]
    mask = np.zeros((size, size), np.float32)
    mask[size // 4: size // 2, size // 4: 3 * size // 4] = 1
    kw = {"mask": mask, "source_caption": "a cat on the red sofa", "target_caption": "a dog on the red sofa"}
    rows = []
    with threads(1):
        for suite in SUITES:
            compute(suite, *pairs[0], models, **kw)   # loads and caches the networks
            times = []
            for src, edited in pairs:
                t0 = time.perf_counter()
                compute(suite, src, edited, models, **kw)
                times.append(time.perf_counter() - t0)
            rows.append(value_row(f"metrics {suite}", "samples/s", times, per_second=True))
    ctx.setup["metrics"] = f"tiny metric networks on the CPU, 1 thread, {size}x{size} pairs, {samples} samples per set"
    return rows


def datagen_stage_names():
    from _common import load_pack

    load_pack()
    from contextedit.nodes.datagen.pipeline import STAGES

    return list(STAGES) + ["export"]


def datagen(ctx):
    """benchmarks/datagen_stages.py: items/s of each data-pipeline stage with the tiny models (CPU)."""
    from _common import load_pack

    load_pack()
    from contextedit.nodes.datagen.export import export
    from contextedit.nodes.datagen.inpaint import Inpainter
    from contextedit.nodes.datagen.pipeline import STAGES, Pipeline
    from contextedit.nodes.executability.vlm_runtime import GenerationResult
    from contextedit.nodes.masks.sam import load_sam
    from datagen_common import default_reply, kind_of, tiny_sam_path, tiny_vlm
    from fixtures.tiny_inpaint import (
        make_tiny_inpaint_folder,
        make_tiny_inpaint_single_file,
    )
    from fixtures.tiny_models import write_test_image

    n_images, tokens, steps, res = 2, 8, 2, 64

    class TimedVLM:
        def __init__(self, vlm):
            self.vlm = vlm

        def __getattr__(self, name):
            return getattr(self.vlm, name)

        def generate(self, image, prompt, max_new_tokens=512, should_stop=None, on_token=None):
            real = self.vlm.generate(image, prompt, max_new_tokens=tokens)
            first = image[0] if isinstance(image, (list, tuple)) else image
            return GenerationResult(default_reply(kind_of(prompt), first.size, real.model_input_size, prompt),
                                    real.model_input_size, real.num_new_tokens)

    tmp = ctx.scratch / "datagen"
    models = ctx.cache / "datagen-models"
    rows = []
    with threads(1):
        vlm = TimedVLM(tiny_vlm(str(models)))
        sam_model = load_sam(tiny_sam_path(str(models)))
        inpainter = Inpainter(make_tiny_inpaint_single_file(str(models)), config=make_tiny_inpaint_folder(str(models)),
                              device="cpu", steps=steps, resolution=res)
        for i in range(n_images):
            write_test_image(tmp / "images" / f"img{i:03d}.png", 64, 64)
        pipe = Pipeline(str(tmp / "run"), str(tmp / "images"), vlm=vlm, sam=sam_model, inpainter=inpainter,
                        progress=False, log=None)
        for stage in STAGES:
            report = pipe.run(stage)
            if report.failed:
                raise RuntimeError(f"datagen stage {stage} failed on {report.failed}")
            per_item = report.seconds / max(len(report.done), 1)
            rows.append(value_row(f"datagen {stage}", "items/s", [per_item], per_second=True))
        t0 = time.perf_counter()
        export(str(tmp / "run"), log=None)
        rows.append(value_row("datagen export", "items/s", [(time.perf_counter() - t0) / n_images], per_second=True))
    ctx.setup["datagen"] = (f"tiny models on the CPU, 1 thread, {n_images} images of 64x64, {tokens} real VLM tokens "
                            f"per "
                            f"call (scripted replies), inpainting {steps} steps at {res} px; one pass (best = median)")
    return rows


# --------------------------------------------------------------------------- the suite
# --full time per stage on one H100 (est_full), from FLOPs at ~40 % of bf16/fp16 peak plus launch
# overhead, model building included: SD1.5 512 px ~0.8 TFLOP per CFG step (~20 ms with overhead),
# 20 steps x 12 runs; SDXL 1024 px ~6 TFLOP per CFG step (~50 ms), 20 steps x 8 runs, + building the
# 2.6 B UNet and CLIP-L/G; FLUX.1 1024 px (4096 image + 4096 reference + 768 text tokens) ~270 TFLOP
# per step (~0.7 s), so 4 steps x 3 interleaved runs x 3 entries (not dit_overhead.py's 8 x 15) plus
# 1-step warm-ups; MAG fp32 SD1.5: plain 50 CFG calls ~1.5 s, fast ~7 s (101 calls + 40 backward
# passes), paper ~65 s (1075 calls + 375 backward), so paper runs once; the 3B VLM: build, save
# (~7.5 GB) and load ~45 s, then 128 tokens at ~30 ms, 4 runs. Peak memory: FLUX.1's 24 GB of bf16
# weights + a few GB of activations is the largest; every stage frees its models before the next.
@dataclass
class Bench:
    name: str
    fn: object
    measures: object          # ctx -> [(benchmark, measure, goal)] expected rows
    est_quick: float          # seconds, for the time budget (rough, a loaded 2-core CPU)
    est_full: float           # seconds on one H100, model building included (from FLOPs; see README)


def _sd_measures(ctx):
    if ctx.full:
        return [("attention mask SD1.5", "patched / unpatched", "<= 1.05"),
                ("attention mask SDXL", "patched / unpatched", "<= 1.05")]
    return [("attention mask SD1.5", "patched / unpatched", "<= 1.05")]


def _dit_measures(ctx):
    fams = ["FLUX.1"] if ctx.full else ["FLUX.1", "Qwen-Image"]
    return [m for f in fams for m in ((f"DiT confinement {f}", "patched / unpatched (same cond)", "<= 1.10"),
                                      (f"DiT confinement {f}", "patched / stock prompt", None))]


def _check_measures(ctx):
    n = 128 if ctx.full and not ctx.smoke else 32
    return [("check latency", f"check s ({n} tokens)", "<= 0.7" if ctx.full and not ctx.smoke else None),
            ("check latency", "tokens/s", None)]


def _metrics_measures(ctx):
    from _common import load_pack

    load_pack()
    from contextedit.nodes.metrics.suites import SUITES

    return [(f"metrics {s}", "samples/s", None) for s in SUITES]


BENCHES = [
    Bench("attention_sd", attention_sd, _sd_measures, 260, 90),
    Bench("dit", dit, _dit_measures, 30, 75),
    Bench("image_stream", image_stream, lambda ctx: [("image stream", "stream / unpatched", None),
                                                     ("image stream", "(mask + stream) / mask", None)], 25, 20),
    Bench("mag", mag, lambda ctx: [("MAG Edit", "fast / plain 50-step DDIM", "<= 2.0"),
                                   ("MAG Edit", "paper / fast", None)], 70, 110),
    Bench("region", region, lambda ctx: [("region predictor", "predict ms/image", None),
                                         ("region predictor", "training samples/s", None),
                                         ("region predictor", _fit_measure(ctx), None)], 25, 30),
    Bench("check", check, _check_measures, 30, 75),
    Bench("sam", sam, lambda ctx: [("SAM", "masks from 3 boxes s/image", None)], 15, 20),
    Bench("metrics", metrics, _metrics_measures, 40, 25),
    Bench("datagen", datagen, lambda ctx: [(f"datagen {s}", "items/s", None) for s in datagen_stage_names()], 60, 40),
]


class BenchTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise BenchTimeout("time budget of the suite ran out during this benchmark")


def write_outputs(out: Path, header: str, rows, stages, ctx, errors, done: bool):
    md = render(header, rows, stages, ctx, errors, done)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".md").write_text(md)
    Path(str(out) + ".json").write_text(json.dumps({
        "header": header, "finished": done, "rows": [asdict(r) for r in rows],
        "stages": [asdict(s) for s in stages], "setup": ctx.setup, "errors": errors}, indent=1))


def render(header, rows, stages, ctx, errors, done):
    parts = [header, "", format_table(rows), ""]
    if ctx.full:
        parts += ["| stage | seconds | peak GPU GiB | result |", "|---|---|---|---|"]
        parts += [f"| {s.name} | {s.seconds:.1f} | {'-' if s.peak_gib is None else f'{s.peak_gib:.2f}'} | {s.result} |"
                  for s in stages] + [""]
    else:
        parts += ["Stages (seconds): " + ", ".join(f"{s.name} {s.seconds:.0f} s ({s.result})" for s in stages), ""]
    parts += ["Setup:"] + [f"- {k}: {v}" for k, v in ctx.setup.items()]
    if errors:
        parts += ["", "Errors:"] + [f"- {k}: {v}" for k, v in errors.items()]
    if not done:
        parts += ["", "(the suite had not finished when this was written)"]
    return "\n".join(parts) + "\n"


def run_suite(args) -> int:
    import torch

    if not args.full:   # one thread: on a shared 2-core machine a second one makes runs slower and noisier
        torch.set_num_threads(args.threads or 1)
    ctx = Ctx(args)
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    mode = "full, CUDA" if args.full else ("full-smoke, CPU" if args.full_smoke else "quick, CPU")
    if args.full:
        dev = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    else:
        dev = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"torch threads {torch.get_num_threads()}")
    header = (f"# ContextEdit benchmark suite ({mode})\n\n{time.strftime('%Y-%m-%d %H:%M')} · {dev} · torch "
              f"{torch.__version__} · python {platform.python_version()}")
    budget = args.budget_s or (480 if args.full else 570)
    t_start = time.perf_counter()
    rows, stages, errors = [], [], {}
    for b in chosen:
        expected = b.measures(ctx)
        left = budget - (time.perf_counter() - t_start)
        est = b.est_full if args.full else b.est_quick
        print(f"[suite] {b.name}: starting ({time.perf_counter() - t_start:.0f} s elapsed, ~{est:.0f} s expected, "
              f"{left:.0f} s of budget left)", flush=True)
        if left < 0.5 * est:
            errors[b.name] = f"skipped: {left:.0f} s of the {budget:.0f} s budget left, ~{est:.0f} s needed"
            rows += [Row(bn, m, goal=g, status="skipped") for bn, m, g in expected]
            stages.append(Stage(b.name, 0.0, None, "skipped"))
            continue
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max(1, int(left)))
        try:
            got = b.fn(ctx)
            result = "ok"
        except Exception as error:  # noqa: BLE001  (one failing benchmark must not lose the table)
            got, result = [], "error"
            errors[b.name] = f"{type(error).__name__}: {error}".splitlines()[0][:400]
            traceback.print_exc()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        have = {r.key: r for r in got}
        for bn, m, g in expected:   # every expected row, in order; an absent one says why
            missing = Row(bn, m, goal=g, status="error" if result == "error" else "not run")
            rows.append(have.pop((bn, m), None) or missing)
        rows += list(have.values())
        stages.append(Stage(b.name, seconds, peak, result))
        with contextlib.suppress(Exception):
            ctx.free()
        mem = f", peak GPU {peak:.2f} GiB" if peak is not None else ""
        print(f"[suite] {b.name}: {result} in {seconds:.1f} s{mem}", flush=True)
        if args.out:
            write_outputs(Path(args.out), header, rows, stages, ctx, errors, done=False)
    wall = time.perf_counter() - t_start
    header += f" · suite wall {wall:.0f} s"
    print()
    print(render(header, rows, stages, ctx, errors, True))
    if args.out:
        write_outputs(Path(args.out), header, rows, stages, ctx, errors, done=True)
        print(f"table written to {args.out}.md and {args.out}.json")
    report = check_goals(rows, [(bn, m) for b in chosen for bn, m, _ in b.measures(ctx)])
    print("goals:", report.summary())
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CPU, tiny models (the default)")
    mode.add_argument("--full", action="store_true", help="CUDA, full-size random-weight architectures")
    mode.add_argument("--full-smoke", action="store_true", help="the --full code paths on the CPU, tiny configs")
    mode.add_argument("--check", metavar="FILE", help="re-read a saved table (.md) and re-decide its goals")
    ap.add_argument("--out", help="write the table to OUT.md and OUT.json (rewritten after every benchmark)")
    ap.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                    help="comma-separated benchmark names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the benchmark names and exit")
    ap.add_argument("--repeats", type=int, default=0, help="interleaved runs per entry (default: per benchmark)")
    ap.add_argument("--budget-s", type=float, default=0,
                    help="stop starting benchmarks past this many seconds (default 570 quick, 480 full)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for --quick (default 1)")
    ap.add_argument("--sd-latent", type=int, default=64, help="--quick attention mask SD latent side (default 64)")
    ap.add_argument("--sd-steps", type=int, default=1, help="--quick attention mask SD sampling steps (default 1)")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(b.name for b in BENCHES))
        return 0
    if args.check:
        rows = parse_table(Path(args.check).read_text())
        report = check_goals(rows)
        print("goals:", report.summary())
        return 0 if report.ok else 1
    unknown = set(args.only or ()) - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(b.name for b in BENCHES)}")
    if args.full:
        import torch

        if not torch.cuda.is_available():
            print("suite.py --full needs a CUDA GPU (torch.cuda.is_available() is False here); "
                  "run --quick on a CPU machine, or --full-smoke to check the --full code paths on the CPU.",
                  file=sys.stderr)
            return 2
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
