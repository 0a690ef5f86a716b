"""Draw the small pictures of the node help pages: web/docs/images/*.png.

    python tools/make_help_images.py

Schematic pictures (Pillow shapes and Pillow's built-in font) of what a node does to an image;
they illustrate the idea, they are not outputs of a model.
"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "web" / "docs" / "images"
W, H = 192, 144           # one panel
PAD, LABEL = 10, 22       # gap between panels, label strip height
BG = (30, 36, 48)
TEXT = (225, 230, 238)
COLOURS = [(255, 130, 40), (60, 170, 255), (190, 90, 230)]  # instruction 1, 2, 3


def font(size=13):
    return ImageFont.load_default(size=size)


def scene():
    """A picture: sky, sun, a tree, a hill and a boat on water."""
    img = Image.new("RGB", (W, H))
    d = ImageDraw.Draw(img)
    for y in range(H):
        t = y / H
        d.line([(0, y), (W, y)], fill=(int(100 + 60 * t), int(160 + 40 * t), int(235 - 25 * t)))
    d.ellipse([128, 18, 160, 50], fill=(255, 214, 90))                        # sun
    d.pieslice([-40, 70, 120, 190], 180, 360, fill=(70, 150, 90))             # hill
    d.rectangle([0, 118, W, H], fill=(50, 110, 170))                          # water
    d.rectangle([40, 64, 46, 100], fill=(110, 80, 50))                        # tree trunk
    d.ellipse([24, 34, 62, 74], fill=(40, 120, 60))                           # tree crown
    d.polygon([(120, 112), (168, 112), (160, 124), (128, 124)], fill=(150, 70, 50))  # boat
    d.line([(144, 88), (144, 112)], fill=(240, 240, 240), width=2)
    d.polygon([(146, 90), (146, 110), (162, 110)], fill=(245, 245, 245))      # sail
    return img


REGIONS = {"sky": [100, 4, 188, 60], "tree": [18, 28, 68, 104], "boat": [114, 84, 172, 128]}


def tint(img, box_or_mask, colour, alpha=0.55):
    layer = Image.new("RGB", img.size, colour)
    if isinstance(box_or_mask, Image.Image):
        mask = box_or_mask.point(lambda v: int(v * alpha))
    else:
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).rectangle(box_or_mask, fill=int(255 * alpha))
    return Image.composite(layer, img, mask)


def box_mask(box):
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def sheet(panels, title=None):
    """Panels side by side, each with a label under it (and an optional title line)."""
    top = LABEL if title else 0
    out = Image.new("RGB", (PAD + len(panels) * (W + PAD), top + PAD + H + LABEL + PAD // 2), BG)
    d = ImageDraw.Draw(out)
    if title:
        d.text((PAD, 6), title, font=font(14), fill=TEXT)
    for i, (img, label) in enumerate(panels):
        x = PAD + i * (W + PAD)
        out.paste(img.convert("RGB"), (x, top + PAD))
        d.text((x + W // 2, top + PAD + H + 4), label, font=font(12), fill=TEXT, anchor="ma")
    return out


def decode_masks():
    base = scene()
    planned = base.copy()
    d = ImageDraw.Draw(planned)
    for colour, key in zip(COLOURS, ("sky", "boat")):
        d.rectangle(REGIONS[key], outline=colour, width=3)
    split = Image.new("RGB", (W, H), (0, 0, 0))
    sky = box_mask(REGIONS["sky"]).resize((W // 3, H // 3))
    boat = box_mask(REGIONS["boat"]).resize((W // 3, H // 3))
    for j, m in enumerate((sky, boat, Image.new("L", sky.size, 0))):
        x = j * (W // 3)
        split.paste(Image.new("RGB", sky.size, (255, 255, 255)), (x, H // 3), m)
        ImageDraw.Draw(split).rectangle([x, H // 3, x + W // 3 - 1, 2 * H // 3 - 1], outline=(120, 120, 120))
        ImageDraw.Draw(split).text((x + W // 6, 2 * H // 3 + 4), f"{j + 1}" + (" [NEG]" if j == 2 else ""),
                                   font=font(11), fill=TEXT, anchor="ma")
    preview = tint(tint(base, REGIONS["sky"], COLOURS[0]), REGIONS["boat"], COLOURS[1])
    return sheet([(planned, "plan: a box per instruction"), (split, "masks: one per instruction"),
                  (preview, "preview")])


def attention_mask():
    base = scene()
    everywhere = tint(base, [0, 0, W, H], COLOURS[0], 0.45)
    confined = tint(base, REGIONS["sky"], COLOURS[0], 0.45)
    confined = tint(confined, REGIONS["boat"], COLOURS[1], 0.45)
    return sheet([(base, "image"), (everywhere, "prompt acts everywhere"),
                  (confined, "each instruction in its mask")])


def predict_edit_region():
    base = scene()
    soft = Image.new("L", (W, H), 0)
    ImageDraw.Draw(soft).ellipse([106, 74, 180, 134], fill=255)
    soft = soft.filter(ImageFilter.GaussianBlur(12))
    binary = soft.point(lambda v: 255 if v >= 128 else 0)
    overlay = tint(base, binary, (230, 40, 40), 0.5)
    return sheet([(base, "image + \"paint the boat\""), (soft.convert("RGB"), "soft_mask"),
                  (binary.convert("RGB"), "mask"), (overlay, "overlay")])


IMAGES = {"decode_masks.png": decode_masks, "attention_mask.png": attention_mask,
          "predict_edit_region.png": predict_edit_region}


def main(argv=None):
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in IMAGES.items():
        draw().save(OUT / name, optimize=True)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
