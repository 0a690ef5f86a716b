"""Published reference values, in each paper's reported scale, each row labelled with the dataset it
was measured on, where it is printed and the protocol (backbones, preprocessing) behind it.

A number is only comparable with ours when dataset and protocol match: the benchmark runner prints a
row only under a run on that row's dataset; the node's table prints every row with its label.

What was checked, and how:
- PIE-Bench rows: PnP Inversion's README says its ``evaluation/evaluate.py --evaluate_whole_table``
  reproduces the paper's Table 1, so those rows are that script's protocol (read in
  cure-lab/PnPInversion ``evaluation/``).
- MagicBrush rows of the MagicBrush paper: its released ``evaluation/image_eval.py`` (CLIP ViT-B/32
  via ``clip.load``, DINO ViT-S/16 via torch.hub, read in OSU-NLP-Group/MagicBrush).
- Emu Edit test set rows: Emu Edit released its test set and generations but no evaluation code.
  Its CLIP metrics are InstructPix2Pix's (``metrics/clip_similarity.py`` computes exactly CLIP
  direction, image and output similarity, ViT-L/14, resize to 224 x 224 without a crop); that the
  Emu Edit numbers came from that code is our reading, not checked against any Emu Edit code. The
  DINO backbone is not stated where we looked.
- "Beyond Editing Pairs" (arXiv 2505.19352) rows: from the paper's Tables 2 and 3; it released no
  code. On the Emu Edit test set its InstructPix2Pix row (CLIPout 0.2648, CLIPimg 0.8448) is not
  the Emu Edit paper's (0.219, 0.834) for the same model, so its CLIP protocol differs from Emu
  Edit's: compare its CLIP numbers with care.
- SmartEdit row: from the project notes (shared/notes/algorithms.md); the paper's protocol was not
  checked.
Only numbers present in those sources are listed; a metric without a published number has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATASETS = {
    "pie": "PIE-Bench (700 images)",
    "magicbrush": "MagicBrush test set, single-turn",
    "emu_test": "Emu Edit test set",
}

PIE_SCRIPT = ("PIE-Bench evaluate.py: DINO ViT-B/8 structure distance, LPIPS SqueezeNet, CLIP ViT-L/14 "
              "(torchmetrics CLIPScore: short side 224, centre crop), SSIM without the 5-pixel border")
MAGICBRUSH_SCRIPT = ("MagicBrush image_eval.py: CLIP ViT-B/32 (short side 224 bicubic, centre crop), "
                     "DINO ViT-S/16 (resize 256 bicubic, centre crop 224)")
EMU_PAPER = ("no code released; CLIP ViT-L/14 with InstructPix2Pix's metrics/clip_similarity.py "
             "(resize to 224x224, no crop) is our reading; DINO backbone not stated")
BEYOND_PAIRS = ("no code released; 'consistent with Emu Edit's setup', backbones not stated; its "
                "IP2P row differs from Emu Edit's (CLIPout 0.2648 vs 0.219): another CLIP protocol")
BEYOND_PAIRS_MB = "no code released; 'following the evaluation setup in MagicBrush', backbones not stated"


@dataclass(frozen=True)
class Reference:
    method: str
    dataset: str           # key of DATASETS
    source: str            # where the numbers are printed
    protocol: str          # backbones and preprocessing behind them, as far as known
    values: dict = field(default_factory=dict)  # {metric key: value in the paper's scale}

    def label(self) -> str:
        return f"{self.method}: {DATASETS[self.dataset]}; {self.source}; {self.protocol}"


_PNP = "Ju et al., PnP Inversion (ICLR 2024), Table 1"
_MB = "Zhang et al., MagicBrush (NeurIPS 2023), single-turn table"
_EMU = "Sheynin et al., Emu Edit (CVPR 2024), Emu Edit test set table"
_BEYOND_EMU = "Beyond Editing Pairs (arXiv 2505.19352), Table 2, 5M"
_BEYOND_MB = "Beyond Editing Pairs (arXiv 2505.19352), Table 3 single-turn, 5M"

_EMU_ROWS = (
    Reference("Emu Edit", "emu_test", _EMU, EMU_PAPER,
              {"clip_dir": 0.109, "clip_img": 0.859, "clip_out": 0.231, "l1": 0.094, "dino": 0.819}),
    Reference("IP2P", "emu_test", _EMU, EMU_PAPER,
              {"clip_dir": 0.078, "clip_img": 0.834, "clip_out": 0.219, "l1": 0.121, "dino": 0.762}),
    Reference("NTI", "emu_test", _EMU, EMU_PAPER, {"clip_dir": 0.101}),
    Reference("BeyondPairs", "emu_test", _BEYOND_EMU, BEYOND_PAIRS,
              {"clip_dir": 0.1088, "clip_out": 0.2842, "l1": 0.0723, "clip_img": 0.8913, "dino": 0.8337}),
)

REFERENCES = {
    "pie": (
        Reference("DirectInversion+P2P", "pie", _PNP, PIE_SCRIPT,
                  {"structure_distance": 11.65, "psnr_bg": 27.22, "lpips_bg": 54.55, "mse_bg": 32.86,
                   "ssim_bg": 84.76, "clip_whole": 25.02, "clip_edited": 22.10}),
        Reference("NTI+P2P", "pie", _PNP, PIE_SCRIPT,
                  {"structure_distance": 13.44, "psnr_bg": 27.03, "lpips_bg": 60.67}),
        Reference("NPI+P2P", "pie", _PNP, PIE_SCRIPT,
                  {"structure_distance": 16.17, "psnr_bg": 26.21, "lpips_bg": 69.01}),
    ),
    "magicbrush": (
        Reference("IP2P", "magicbrush", _MB, MAGICBRUSH_SCRIPT,
                  {"l1": 0.1122, "l2": 0.0371, "clip_i": 0.8524, "dino": 0.7428, "clip_t": 0.2764}),
        Reference("IP2P+MagicBrush", "magicbrush", _MB, MAGICBRUSH_SCRIPT,
                  {"l1": 0.0625, "l2": 0.0203, "clip_i": 0.9332, "dino": 0.8987, "clip_t": 0.2781}),
        Reference("NTI", "magicbrush", _MB, MAGICBRUSH_SCRIPT,
                  {"l1": 0.0749, "clip_i": 0.8827, "dino": 0.8206}),
        Reference("SmartEdit", "magicbrush", "SmartEdit (CVPR 2024), as collected in the project notes",
                  "not checked (backbones as reported there unknown to us)",
                  {"l1": 0.0810, "clip_i": 0.9140, "dino": 0.8150, "clip_t": 0.3050}),
        Reference("BeyondPairs", "magicbrush", _BEYOND_MB, BEYOND_PAIRS_MB,
                  {"l1": 0.0657, "l2": 0.0212, "clip_i": 0.9383, "dino": 0.8589}),
    ),
    "emu": _EMU_ROWS,
    "emu_crop": _EMU_ROWS,
}


def rows(suite: str, dataset: str | None = None) -> list:
    """The reference rows of a metric set; with ``dataset``, only those measured on it."""
    return [r for r in REFERENCES.get(suite, ()) if dataset is None or r.dataset == dataset]


def values(suite: str, key: str, dataset: str | None = None) -> dict:
    """{method: value} of one metric (the rows that report it)."""
    return {r.method: r.values[key] for r in rows(suite, dataset) if key in r.values}
