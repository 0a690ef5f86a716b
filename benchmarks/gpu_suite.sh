#!/usr/bin/env bash
# The benchmark suite's --full run on one CUDA GPU (H100-class, 80 GB), stopped after 9 minutes.
#
#   benchmarks/gpu_suite.sh [OUT_DIR]        (default OUT_DIR: ./bench-results)
#
# Writes OUT_DIR/gpu_suite.md and OUT_DIR/gpu_suite.json (rewritten after every benchmark, so a run
# cut short still leaves the rows it finished) and prints where they are.
#
# Sets up nothing and needs no network. It expects, already installed in the python it runs
# (PYTHON, default `python`): a CUDA build of torch + torchvision, the pack with its test extras
# (`pip install ".[test]"`: diffusers, transformers, segment-anything, ...) and ComfyUI's
# requirements; COMFYUI_PATH pointing at ComfyUI 0.8.0 (default: ../shared/comfyui-0.8.0 beside the
# checkout). All models are random-weight and built in the run (no download); the 3B VLM is
# written to a temp folder once (~7.5 GB of disk) and removed after its benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."

out_dir="${1:-bench-results}"
mkdir -p "$out_dir"
if [ -z "${COMFYUI_PATH:-}" ] && [ -f ../shared/comfyui-0.8.0/main.py ]; then
  COMFYUI_PATH="$(cd ../shared/comfyui-0.8.0 && pwd)"
fi
if [ -z "${COMFYUI_PATH:-}" ]; then
  echo "gpu_suite: set COMFYUI_PATH to a ComfyUI 0.8.0 checkout (the attention-mask and DiT rows need it)" >&2
fi
export COMFYUI_PATH="${COMFYUI_PATH:-}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # nothing may be fetched

timeout --kill-after=20 540 "${PYTHON:-python}" benchmarks/suite.py --full --out "$out_dir/gpu_suite"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "gpu_suite: stopped by the 9-minute timeout; the rows finished before it are in the table below" >&2
fi
if [ -f "$out_dir/gpu_suite.md" ]; then
  echo "gpu_suite: table in $out_dir/gpu_suite.md and $out_dir/gpu_suite.json"
else
  echo "gpu_suite: no table written (exit $rc)" >&2
fi
exit "$rc"
