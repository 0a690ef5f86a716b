"""LPIPS with the SqueezeNet backbone (PIE-Bench's ``net_type='squeeze'``), built from local files.

torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` asks torchvision for ImageNet weights and
downloads them on first use. We build torchmetrics' own LPIPS module with a *random* backbone
(``pnet_rand=True``: nothing is fetched), then load

- the backbone from torchvision's ``squeezenet1_1`` state dict (``squeezenet1_1-b8a52dc0.pth``,
  the file torchvision itself downloads; keys ``features.N.*``), and
- the LPIPS linear heads (``lin0..lin6``, keys ``linK.model.1.weight``) from ``lpips_squeeze.pth``
  in the model folder or, when absent, the copy torchmetrics installs with itself
  (``torchmetrics/functional/image/lpips_models/squeeze.pth``, the same file as richzhang's
  ``lpips/weights/v0.1/squeeze.pth``).

The score is torchmetrics' (inputs in [-1, 1], PIE-Bench passes ``x*2-1``).
"""

from __future__ import annotations

import os
import re

import torch

# which SqueezeNet ``features`` index lands in which LPIPS slice (torchmetrics' SqueezeNet class)
_SLICES = [range(2), range(2, 5), range(5, 8), range(8, 10), range(10, 11), range(11, 12), range(12, 13)]


def _load_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def torchmetrics_lin_path() -> str:
    import torchmetrics.functional.image.lpips as tm_lpips

    return os.path.join(os.path.dirname(tm_lpips.__file__), "lpips_models", "squeeze.pth")


def backbone_to_lpips_keys(state: dict) -> dict:
    """torchvision ``features.N.rest`` -> torchmetrics LPIPS ``net.slices.S.N.rest`` (classifier dropped)."""
    slice_of = {i: s for s, r in enumerate(_SLICES) for i in r}
    out = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        index, rest = key[len("features."):].split(".", 1)
        if int(index) in slice_of:
            out[f"net.slices.{slice_of[int(index)]}.{index}.{rest}"] = value
    return out


def build_lpips_squeeze(backbone_path: str, lin_path: str | None = None) -> torch.nn.Module:
    """torchmetrics' LPIPS (squeeze) with both weight sets loaded from local files; eval, frozen."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    net = _NoTrainLpips(pretrained=False, net="squeeze", pnet_rand=True)
    backbone = backbone_to_lpips_keys(_load_state(backbone_path))
    expected = {k for k in net.state_dict() if k.startswith("net.")}
    missing = sorted(expected - set(backbone))
    if missing:
        raise ValueError(f"'{backbone_path}' is not a torchvision squeezenet1_1 state dict "
                         f"(missing e.g. {missing[0]!r} after mapping features.N -> LPIPS slices)")
    lin_path = lin_path or torchmetrics_lin_path()
    lins = {k: v for k, v in _load_state(lin_path).items() if re.match(r"lin\d+\.", k)}
    # the module also lists each head as lins.K (a ModuleList over the same layers): load linK only
    expected_lin = {k for k in net.state_dict() if re.match(r"lin\d+\.", k)}
    if set(lins) != expected_lin:
        raise ValueError(f"'{lin_path}' is not an LPIPS squeeze linear-head file (expected keys "
                         f"{sorted(expected_lin)[:2]}..., got {sorted(lins)[:2]}...)")
    net.load_state_dict({**backbone, **lins}, strict=False)
    net.eval()
    net.requires_grad_(False)
    return net


@torch.no_grad()
def lpips_distance(net: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    """LPIPS of two [1, 3, H, W] images in [0, 1] (scaled to [-1, 1] as PIE-Bench does)."""
    device = next(net.parameters()).device
    return float(net(a.to(device) * 2 - 1, b.to(device) * 2 - 1).squeeze())
