"""How much torchmetrics 1.5's SSIM border change moves PIE-Bench's SSIM (x10^2, the table's scale).

torchmetrics before 1.5 averaged the SSIM map without its 5-pixel (reflect-padded) border; 1.5
averages the whole padded map. The pack computes the benchmark's value itself (nodes/metrics/pixel.py
``ssim``); this script prints both on a photo plus Gaussian noise, without a mask and with a
PIE-style mask (a central box, the 1-pixel image border forced into the edit region as PIE-Bench's
mask decoder does, both images x (1 - mask)).

    python benchmarks/ssim_border.py [--image PATH] [--size 512]

``--image`` defaults to ComfyUI's input/example.png under COMFYUI_PATH.
"""

import argparse
import os

import numpy as np
import torch
from _common import load_pack


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=os.path.join(os.environ.get("COMFYUI_PATH", ""), "input", "example.png"))
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    load_pack()
    from contextedit.nodes.metrics import pixel
    from PIL import Image
    from torchmetrics.functional.image import structural_similarity_index_measure

    src = np.asarray(Image.open(args.image).convert("RGB").resize((args.size, args.size), Image.BICUBIC))
    mask = np.zeros((args.size, args.size), np.float32)
    q = args.size // 4
    mask[q:3 * q, q:3 * q] = 1
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    rng = np.random.default_rng(0)
    print(f"image {args.image} at {args.size}x{args.size}; SSIM x10^2")
    print("mask      noise sigma  PSNR (dB)  benchmark (cropped)  torchmetrics>=1.5 (padded)  difference")
    for masked in (False, True):
        keep = 1.0 - mask if masked else None
        for sigma in (4.0, 6.0, 9.0, 12.0):
            edited = np.clip(np.round(src + rng.normal(0, sigma, src.shape)), 0, 255).astype(np.uint8)
            a, b = pixel.pie_masked(src, keep), pixel.pie_masked(edited, keep)
            ours = 100 * pixel.ssim(a, b)
            padded = 100 * float(structural_similarity_index_measure(a, b, data_range=1.0))
            print(f"{'PIE box' if masked else 'none':<9} {sigma:>11.1f}  {pixel.psnr(a, b):>9.2f}  {ours:>19.3f}  "
                  f"{padded:>26.3f}  {padded - ours:>+10.3f}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
