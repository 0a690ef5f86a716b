"""Region-loss sweep: does the learnable region localise the edit, per loss weight, at two patch grids?

    python benchmarks/region_loss_sweep.py                 # CPU, ~3 min on one thread
    python benchmarks/region_loss_sweep.py --seeds 0 1 2   # mean over more fresh-head seeds

The tiny localisation scenario (tests/fixtures/tiny_regions.py, LocalisationScenario): a 64 px
image whose instructed edit shows in its left box, a generated image that also tints everything,
t_e = CLIP's embedding of the ideal (left-box-only) edit. Run with the tiny CLIP vision model at
a 4x4 patch grid (N = 16) and at an 8x8 grid (N = 64), with the default-size head
(RegionPredictorConfig defaults apart from the encoder widths).

Prints one row per setting: test-time optimisation (objective.optimize_region, 50 Adam steps)
and training (nodes/regions/train.py's train(), 50 AdamW steps, batch 2, on four copies of the
scenario). Columns: contrast = mean P_region inside the edited box - mean outside (an empty or a
full region has 0), area = fraction of patches with P_region >= 0.5, averaged over the seeds.

"old" rows are the defaults before eq. 9 was normalised: the sum over N^2 patch pairs with
lambda_s = 1, which is exactly lambda_s = N^2 on today's mean form, and test-time lr 1e-3.
"""

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import load_pack


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lambda-s", type=float, nargs="+", default=[0.0, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1e-3], help="test-time learning rates")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-training", action="store_true", help="skip the training rows")
    parser.add_argument("--cache", default=None, help="tiny-model cache (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_pack()
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    from contextedit.nodes.regions import train as T
    from contextedit.nodes.regions.encoders import ClipVisionEncoder
    from contextedit.nodes.regions.losses import LossWeights
    from contextedit.nodes.regions.model import RegionPredictor
    from contextedit.nodes.regions.objective import (
        DEFAULT_TEST_TIME_LR,
        optimize_region,
        predict_region,
    )
    from fixtures.tiny_models import make_tiny_clip_vision, make_tiny_clip_vision_8x8
    from fixtures.tiny_regions import LocalisationScenario, contrast_and_area

    root = Path(args.cache or os.environ.get("CONTEXTEDIT_TEST_CACHE") or tempfile.mkdtemp())
    defaults = LossWeights()
    print(f"defaults: {defaults}, test-time lr {DEFAULT_TEST_TIME_LR}; {args.steps} steps; seeds {args.seeds}")
    print(f"{'N':>3} {'mode':<9} {'setting':<34} {'contrast':>8} {'area':>5} {'s/run':>6}")
    for make in (make_tiny_clip_vision, make_tiny_clip_vision_8x8):
        scenario = LocalisationScenario(root, ClipVisionEncoder.load(make(root).folder))
        n = int(scenario.inside.numel())

        def row(mode, label, run, scenario=scenario, n=n):
            figures, start = [], time.perf_counter()
            for seed in args.seeds:
                figures.append(contrast_and_area(run(seed), scenario.inside))
            per_run = (time.perf_counter() - start) / len(args.seeds)
            contrast = statistics.mean(f[0] for f in figures)
            area = statistics.mean(f[1] for f in figures)
            print(f"{n:>3} {mode:<9} {label:<34} {contrast:>+8.2f} {area:>5.2f} {per_run:>6.1f}", flush=True)

        def test_time(lambda_s, lr, scenario=scenario):
            def run(seed):
                weights = LossWeights(lambda_s=lambda_s)
                result = optimize_region(scenario.encoders, *scenario.args, steps=args.steps, lr=lr,
                                         weights=weights, seed=seed)
                return result.region.probs[0]
            return run

        for lr in args.lr:
            for lambda_s in args.lambda_s:
                row("test-time", f"lambda_s {lambda_s:g}, lr {lr:g}", test_time(lambda_s, lr))
        row("test-time", f"old: sum (lambda_s {n * n}), lr 0.001", test_time(float(n * n), 1e-3))
        row("test-time", f"old: sum (lambda_s {n * n}), lr {DEFAULT_TEST_TIME_LR:g}",
            test_time(float(n * n), DEFAULT_TEST_TIME_LR))
        if args.no_training:
            continue

        def training(lambda_s, scenario=scenario):
            def run(seed):
                folder = Path(tempfile.mkdtemp())
                data = scenario.write_dataset(folder / "data")
                argv = ["train", "--data", str(data), "--clip-vision", "-", "--clip-text", "-", "--text-encoder", "-",
                        "--out", str(folder / "run"), "--image-size", "64", "--steps", str(args.steps),
                        "--batch-size", "2", "--save-every", "0", "--log-every", str(args.steps),
                        "--seed", str(seed)]
                if lambda_s is not None:
                    argv += ["--lambda-s", str(lambda_s)]
                with contextlib.redirect_stderr(io.StringIO()):  # the trainer's progress bar
                    path = T.train(T.build_parser().parse_args(argv), encoders=scenario.encoders)
                head = RegionPredictor.load(path)
                return predict_region(head, scenario.encoders, scenario.source, [scenario.args[1]]).probs[0]
            return run

        row("training", f"defaults (lambda_s {defaults.lambda_s:g})", training(None))
        row("training", f"old: sum (lambda_s {n * n})", training(float(n * n)))


if __name__ == "__main__":
    main()
