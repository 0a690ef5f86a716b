"""Region predictor speed: inference time and training throughput.

    python benchmarks/region_predictor.py            # CPU, tiny encoders + tiny head (1 thread)
    python benchmarks/region_predictor.py --full     # full-size random weights (CLIP ViT-L/14 vision,
                                                     # FLAN-T5-base encoder, d=768 head), 224x224,
                                                     # on CUDA when available

Prints: head-only forward time, end-to-end predict_region time (encoders + head), and training
samples/s of one L_total step (head forward, composite, CLIP forward + backward, AdamW).
"""

import argparse
import statistics
import tempfile
import time

import torch
from _common import load_pack


def timed(fn, repeat, sync):
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def full_encoders(device, dtype):
    from contextedit.nodes.regions.encoders import (
        ClipVisionEncoder,
        T5InstructionEncoder,
    )
    from contextedit.nodes.regions.objective import RegionEncoders
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(0)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(  # ViT-L/14 @ 224
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
        image_size=224, projection_dim=768, hidden_act="quick_gelu"))
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False))

    class FakeTokenizer:  # random weights: token ids need no real vocabulary
        def __call__(self, texts, **_):
            ids = torch.randint(5, 32000, (len(texts), 16))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    enc = RegionEncoders(ClipVisionEncoder(vision), T5InstructionEncoder(t5, FakeTokenizer()),
                         text=lambda texts: torch.randn(len(texts), 768, device=device))
    enc.vision.to(device, dtype)
    enc.instruction.to(device, dtype)
    return enc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    load_pack()
    from contextedit.nodes.regions.losses import LossWeights
    from contextedit.nodes.regions.model import RegionPredictor
    from contextedit.nodes.regions.objective import (
        encode_batch,
        predict_region,
        region_losses,
    )

    device = torch.device("cuda" if args.full and torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cpu":
        torch.set_num_threads(1)
    if args.full:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        enc, size, head_cfg = full_encoders(device, dtype), 224, {}
    else:
        from regions_common import TINY_HEAD, tiny_encoders

        enc, size, head_cfg = tiny_encoders(tempfile.mkdtemp(prefix="region-bench-")), 64, TINY_HEAD
    torch.manual_seed(0)
    head = RegionPredictor(enc.predictor_config(**head_cfg)).to(device).eval()
    b = args.batch
    images = torch.rand(b, 3, size, size, device=device)
    instructions = ["make the red box green"] * b
    batch = encode_batch(enc, images, instructions, ["a red box"] * b, ["a green box"] * b,
                         torch.rand(b, 3, size, size, device=device))
    with torch.no_grad():
        t_head = timed(lambda: head(batch.clip_patches, batch.ins_features, batch.ins_mask), args.repeat, sync)
    t_e2e = timed(lambda: predict_region(head, enc, images, instructions), args.repeat, sync)

    head.train().requires_grad_(True)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4)
    weights = LossWeights()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _, _ = region_losses(head, enc.vision, batch, weights)
        loss.backward()
        opt.step()

    t_step = timed(step, max(5, args.repeat // 2), sync)
    params = sum(p.numel() for p in head.parameters())
    label = "full (ViT-L/14 + FLAN-T5-base, d=768)" if args.full else "tiny"
    print(f"region predictor [{label}] on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU, 1 thread'})")
    print(f"  head parameters: {params / 1e6:.2f} M, image {size}x{size}, batch {b}, grid {batch.clip_patches.shape[1]} patches")
    print(f"  head forward:            {t_head * 1e3:8.2f} ms / batch ({t_head * 1e3 / b:.2f} ms / image)")
    print(f"  predict_region (e2e):    {t_e2e * 1e3:8.2f} ms / batch ({t_e2e * 1e3 / b:.2f} ms / image)")
    print(f"  training step (L_total): {t_step * 1e3:8.2f} ms / batch = {b / t_step:.1f} samples/s"
          " (encoders precomputed; the CLI also encodes each batch)")


if __name__ == "__main__":
    main()
