"""Edit-quality metrics of PIE-Bench, MagicBrush and Emu Edit (engine), the Edit Metrics node and
the benchmark runner CLI (runner.py). Plain torch / numpy; only node.py imports ComfyUI."""
