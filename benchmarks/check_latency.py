"""Latency of the executability check (VLM generate + parse) for three instructions.

    python benchmarks/check_latency.py                 # tiny Qwen2.5-VL on CPU (the real code path)
    python benchmarks/check_latency.py --full          # Qwen2.5-VL-3B-size random weights (CUDA if available;
                                                       # goal <= 0.7 s, CAMILA's MLLM step)

Random weights write gibberish until ``--max-new-tokens``, so the figure is an upper bound for a
reply of that length; tokens/s is printed to scale it to a real reply (~120 tokens for three items).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import load_pack

INSTRUCTIONS = "make the sky orange\nremove the pancakes from the plate\nmake the car red"

# Qwen2.5-VL-3B-Instruct architecture (config.json of the released model)
FULL_TEXT = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, vocab_size=151936,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
FULL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, out_hidden_size=2048, num_heads=16,
                   fullatt_block_indexes=[7, 15, 23, 31], window_size=112)


def full_size_folder(cache: Path) -> Path:
    """The tiny folder's processor files with a 3B-size config and random weights."""
    from fixtures.tiny_models import make_tiny_qwen2_vl
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    target = cache / "qwen2.5-vl-3b-random"
    if (target / "model.safetensors.index.json").exists() or (target / "model.safetensors").exists():
        return target
    tiny = make_tiny_qwen2_vl(cache, family="qwen2_5_vl")
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["text_config"].update(FULL_TEXT)
    cfg["vision_config"].update(FULL_VISION)
    cfg.update({k: v for k, v in FULL_TEXT.items() if k in ("hidden_size", "vocab_size")})
    config = Qwen2_5_VLConfig.from_dict(cfg)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = []  # never stop early: time exactly max_new_tokens
    model.save_pretrained(target)
    for f in tiny.iterdir():
        if f.suffix in (".json", ".jinja") and f.name not in ("config.json", "generation_config.json") \
                and not f.name.startswith("model"):
            (target / f.name).write_bytes(f.read_bytes())
    return target


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "contextedit_bench"))
    args = ap.parse_args()
    load_pack()
    from contextedit.nodes.executability.checker import check_instructions
    from contextedit.nodes.executability.vlm_runtime import load_vlm
    from fixtures.tiny_models import make_tiny_qwen2_vl

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    folder = full_size_folder(cache) if args.full else make_tiny_qwen2_vl(cache, family="qwen2_5_vl")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vlm = load_vlm(folder, device=device)
    image = (torch.rand(args.size, args.size, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tokens = []

    def run():
        counter = {"n": 0}

        def on_token(n, _):
            counter["n"] = n
        sync()
        t0 = time.perf_counter()
        plan, _ = check_instructions(vlm, image, INSTRUCTIONS, max_new_tokens=args.max_new_tokens, on_token=on_token)
        sync()
        tokens.append(counter["n"])
        assert len(plan.items) == 3
        return time.perf_counter() - t0

    run()  # warm-up
    times = [run() for _ in range(args.repeats)]
    med = statistics.median(times)
    n = statistics.median(tokens)
    params = sum(p.numel() for p in vlm.model.parameters())
    print(f"device={device} dtype={vlm.dtype} model={'Qwen2.5-VL-3B-size random' if args.full else 'tiny Qwen2.5-VL'} "
          f"params={params / 1e6:.1f}M image={args.size}x{args.size} instructions=3")
    print(f"check latency median {med:.3f} s over {args.repeats} runs (min {min(times):.3f} s), "
          f"{n:.0f} new tokens, {n / med:.1f} tokens/s")


if __name__ == "__main__":
    main()
