"""Draw the pack's registry icon (pyproject.toml [tool.comfy] Icon): assets/icon.png, 400x400.

    python tools/make_icon.py [OUT]

A picture with one region marked for editing: what the pack does (edit only where the
instruction is about). Drawn with Pillow shapes, no font, so it renders the same everywhere.
"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SIZE = 400


def draw(size=SIZE):
    scale = 4  # draw large, then downsample: smooth edges without antialiasing support
    s = size * scale
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([0, 0, s - 1, s - 1], radius=s // 8, fill=(30, 36, 48, 255))
    # the picture: sky, sun, two hills
    x0, y0, x1, y1 = int(s * 0.12), int(s * 0.16), int(s * 0.88), int(s * 0.84)
    sky = Image.new("RGBA", (x1 - x0, y1 - y0))
    sd = ImageDraw.Draw(sky)
    for y in range(y1 - y0):
        t = y / (y1 - y0)
        sd.line([(0, y), (x1 - x0, y)], fill=(int(90 + 60 * t), int(150 + 50 * t), int(230 - 20 * t), 255))
    mask = Image.new("L", sky.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, sky.size[0] - 1, sky.size[1] - 1], radius=s // 24, fill=255)
    img.paste(sky, (x0, y0), mask)
    d.ellipse([int(s * 0.56), int(s * 0.26), int(s * 0.72), int(s * 0.42)], fill=(255, 214, 90, 255))
    d.pieslice([int(s * 0.02), int(s * 0.56), int(s * 0.62), int(s * 1.16)], 180, 360, fill=(70, 150, 90, 255))
    d.pieslice([int(s * 0.40), int(s * 0.60), int(s * 1.00), int(s * 1.20)], 180, 360, fill=(50, 120, 75, 255))
    # keep the hills inside the picture frame
    frame = Image.new("L", (s, s), 0)
    ImageDraw.Draw(frame).rounded_rectangle([x0, y0, x1, y1], radius=s // 24, fill=255)
    background = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    ImageDraw.Draw(background).rounded_rectangle([0, 0, s - 1, s - 1], radius=s // 8, fill=(30, 36, 48, 255))
    img = Image.composite(img, background, frame)
    # the edit region: a tinted box with a dashed outline around the sun
    rx0, ry0, rx1, ry1 = int(s * 0.50), int(s * 0.20), int(s * 0.78), int(s * 0.48)
    tint = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    ImageDraw.Draw(tint).rectangle([rx0, ry0, rx1, ry1], fill=(255, 120, 40, 70))
    img = Image.alpha_composite(img, tint)
    d = ImageDraw.Draw(img)
    dash, width = s // 40, max(4, s // 100)
    for a, b, horizontal, fixed in ((rx0, rx1, True, ry0), (rx0, rx1, True, ry1), (ry0, ry1, False, rx0), (ry0, ry1, False, rx1)):
        for start in range(a, b, 2 * dash):
            end = min(start + dash, b)
            line = [(start, fixed), (end, fixed)] if horizontal else [(fixed, start), (fixed, end)]
            d.line(line, fill=(255, 140, 50, 255), width=width)
    return img.resize((size, size), Image.LANCZOS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else REPO / "assets" / "icon.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    draw().save(out, optimize=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
