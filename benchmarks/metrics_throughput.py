"""Edit-metrics throughput: samples/s of each metric set on CPU with the tiny random-weight networks.

    python benchmarks/metrics_throughput.py [--size 512] [--samples 4] [--threads 1]

Each sample is a (source, edited) pair of SIZE x SIZE random 8-bit images with a box mask and two
captions, scored after one warm-up sample (networks loaded and cached). The tiny networks
(tests/fixtures/tiny_metrics.py) keep the real input pipelines (resize to 224 for DINO, SqueezeNet
LPIPS at full image size) but not the real widths, so the figures bound the pipeline overhead, not
the cost of ViT-L/14 or ViT-B/8 at full size.
"""

import argparse
import tempfile
import time

import numpy as np
import torch
from _common import load_pack


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512, help="image side (PIE-Bench images are 512)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_pack()
    from contextedit.nodes.metrics.models import MetricModels
    from contextedit.nodes.metrics.suites import SUITES, compute
    from fixtures.tiny_metrics import make_tiny_metric_models

    with tempfile.TemporaryDirectory() as tmp:
        models = MetricModels.from_dirs([make_tiny_metric_models(tmp)])
        rng = np.random.default_rng(0)
        pairs = [(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8),
                  rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(args.samples + 1)]
        mask = np.zeros((args.size, args.size), np.float32)
        mask[args.size // 4: args.size // 2, args.size // 4: 3 * args.size // 4] = 1
        kw = {"mask": mask, "source_caption": "a cat on the red sofa", "target_caption": "a dog on the red sofa"}
        print(f"CPU, {args.threads} thread(s), {args.size}x{args.size} images, {args.samples} samples, tiny networks")
        for suite in SUITES:
            compute(suite, *pairs[0], models, **kw)  # warm-up: load + cache networks
            start = time.perf_counter()
            for src, edited in pairs[1:]:
                compute(suite, src, edited, models, **kw)
            elapsed = time.perf_counter() - start
            print(f"  {SUITES[suite][0]:<22} {args.samples / elapsed:8.2f} samples/s  ({elapsed / args.samples * 1e3:7.1f} ms/sample)")


if __name__ == "__main__":
    main()
