"""Data-pipeline throughput: items/s of each stage on CPU with the tiny random-weight models.

    python benchmarks/datagen_stages.py [--images 6] [--size 64] [--tokens 16] [--threads 1]
        [--steps 4] [--resolution 64]

One item = one source image (the test image of tests/fixtures, SIZE x SIZE). The tiny Qwen2.5-VL
runs for real (processor, image tokens, prefill and ``--tokens`` greedy tokens per call); its
text is then replaced by a scripted well-formed reply (a random-weight model writes no JSON), so
every stage has work to do. Inpainting: the tiny 9-channel UNet from the single-file layout,
``--steps`` steps at ``--resolution``, two inpaintings per item (remove, replace). The figures
bound the pipeline's own overhead and the stage structure (calls per item), not the cost of a
7B VLM, SAM ViT-H or SD1.5 at 512 px; a models directory cache is built under a temp folder.
"""

import argparse
import tempfile
import time

import torch
from _common import load_pack


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16, help="greedy tokens the tiny VLM generates per call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="inpainting steps")
    parser.add_argument("--resolution", type=int, default=64, help="inpainting short side")
    parser.add_argument("--cache", help="folder for the tiny models (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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

    class TimedVLM:
        def __init__(self, vlm):
            self.vlm = vlm

        def __getattr__(self, name):
            return getattr(self.vlm, name)

        def generate(self, image, prompt, max_new_tokens=512, should_stop=None, on_token=None):
            real = self.vlm.generate(image, prompt, max_new_tokens=args.tokens)
            first = image[0] if isinstance(image, (list, tuple)) else image
            reply = default_reply(kind_of(prompt), first.size, real.model_input_size, prompt)
            return GenerationResult(reply, real.model_input_size, real.num_new_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or f"{tmp}/models"
        vlm = TimedVLM(tiny_vlm(cache))
        sam = load_sam(tiny_sam_path(cache))
        inpainter = Inpainter(make_tiny_inpaint_single_file(cache), config=make_tiny_inpaint_folder(cache),
                              device="cpu", steps=args.steps, resolution=args.resolution)
        for i in range(args.images):
            write_test_image(f"{tmp}/images/img{i:03d}.png", args.size, args.size)
        pipe = Pipeline(f"{tmp}/run", f"{tmp}/images", vlm=vlm, sam=sam, inpainter=inpainter, progress=False,
                        log=None)
        print(f"CPU, {args.threads} thread(s), {args.images} images of {args.size}x{args.size}, tiny models "
              f"(VLM: {args.tokens} real tokens per call; inpainting: {args.steps} steps at {args.resolution} px)")
        for stage in STAGES:
            report = pipe.run(stage)
            assert not report.failed, f"{stage} failed on {report.failed}"
            print(f"  {stage:<8} {report.items_per_second:8.2f} items/s  ({report.seconds / len(report.done) * 1e3:8.1f} "
                  f"ms/item)")
        start = time.perf_counter()
        counts = export(f"{tmp}/run", log=None)
        elapsed = time.perf_counter() - start
        print(f"  {'export':<8} {args.images / elapsed:8.2f} items/s  ({elapsed / args.images * 1e3:8.1f} ms/item, "
              f"{counts['exported']} pairs)")
        again = time.perf_counter()
        for stage in STAGES:
            pipe.run(stage)
        print(f"  resume of a finished run (all stages skip every item): {time.perf_counter() - again:.3f} s")


if __name__ == "__main__":
    main()
