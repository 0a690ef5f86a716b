"""Published reference values, in each paper's reported scale (what the plots and tables show).

Sources, as collected in the project's notes (shared/notes/algorithms.md, "Status and numbers"):
- PIE-Bench: Direct Inversion paper (Ju et al., "PnP Inversion", Table 1), all methods with
  Prompt-to-Prompt editing on SD 1.4; structure distance x10^3, LPIPS x10^3, MSE x10^4, SSIM x10^2.
- MagicBrush single-turn: MagicBrush paper (Zhang et al.) for InstructPix2Pix / +MagicBrush /
  Null-text Inversion; SmartEdit paper; "Beyond Editing Pairs" (CLIP-I only).
- Emu Edit test set: Emu Edit paper (Sheynin et al.) for Emu Edit and InstructPix2Pix; "Beyond
  Editing Pairs" (CLIPdir, DINO); Null-text Inversion (CLIPdir, as reported by Emu Edit).
Only numbers present there are listed; a metric without a published number has no entry.
"""

REFERENCES = {
    "pie": {
        "structure_distance": {"DirectInversion+P2P": 11.65, "NTI+P2P": 13.44, "NPI+P2P": 16.17},
        "psnr_bg": {"DirectInversion+P2P": 27.22, "NTI+P2P": 27.03, "NPI+P2P": 26.21},
        "lpips_bg": {"DirectInversion+P2P": 54.55, "NTI+P2P": 60.67, "NPI+P2P": 69.01},
        "mse_bg": {"DirectInversion+P2P": 32.86},
        "ssim_bg": {"DirectInversion+P2P": 84.76},
        "clip_whole": {"DirectInversion+P2P": 25.02},
        "clip_edited": {"DirectInversion+P2P": 22.10},
    },
    "magicbrush": {
        "l1": {"IP2P": 0.1122, "IP2P+MagicBrush": 0.0625, "SmartEdit": 0.0810, "NTI": 0.0749},
        "l2": {"IP2P": 0.0371, "IP2P+MagicBrush": 0.0203},
        "clip_i": {"IP2P": 0.8524, "IP2P+MagicBrush": 0.9332, "SmartEdit": 0.9140, "NTI": 0.8827,
                   "BeyondPairs": 0.9383},
        "dino": {"IP2P": 0.7428, "IP2P+MagicBrush": 0.8987, "SmartEdit": 0.8150, "NTI": 0.8206},
        "clip_t": {"IP2P": 0.2764, "IP2P+MagicBrush": 0.2781, "SmartEdit": 0.3050},
    },
    "emu": {
        "clip_dir": {"Emu Edit": 0.109, "IP2P": 0.078, "BeyondPairs": 0.1088, "NTI": 0.101},
        "clip_img": {"Emu Edit": 0.859, "IP2P": 0.834},
        "clip_out": {"Emu Edit": 0.231, "IP2P": 0.219},
        "l1": {"Emu Edit": 0.094, "IP2P": 0.121},
        "dino": {"Emu Edit": 0.819, "IP2P": 0.762, "BeyondPairs": 0.8337},
    },
}
