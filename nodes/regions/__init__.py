"""Learnable edit regions ("Beyond Editing Pairs", arXiv 2505.19352): the region-predictor head,
its frozen encoders, the paper's losses, the training CLI (train.py) and test-time optimisation.
Plain torch/transformers; only node.py imports ComfyUI."""
