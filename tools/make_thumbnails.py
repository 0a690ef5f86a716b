"""The card image of each workflow in the frontend's Templates browser (workflows/<name>.jpg).

The pinned frontend (1.35.9) shows a custom node pack's template as its file name (title), the file
name again with "_" as spaces (description) and <name>.jpg (a square card): the image is the one
place a card can say what the workflow is. Each image is a band with the workflow's title, one
line from its layout spec (workflows/layout/<name>.json, "card") and, for the workflow to open
first, a badge, above a screenshot of the workflow as the real frontend opens it.

The browser suite takes the screenshots and writes the images when asked:

    CONTEXTEDIT_WRITE_IMAGES=1 COMFYUI_PATH=... python -m pytest tests/host/test_browser_workflows.py

or, from screenshots you took yourself (SCREENSHOTS/<name>.png):

    python tools/make_thumbnails.py SCREENSHOTS
"""

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
SIZE = 512
BAND = 150
BACKGROUND = (32, 34, 40)
ACCENT = (64, 110, 200)
BADGE = (214, 140, 40)


def _font(size, bold=False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size=size)


def _wrap(draw, text, font, width):
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def card_image(screenshot, title, text, badge=None):
    """A SIZE x SIZE card: the caption band above the top left of ``screenshot`` (a PIL image)."""
    card = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    shot = screenshot.convert("RGB")
    view_h = SIZE - BAND
    # the screenshot's top left, as wide as the card's aspect allows, scaled to fit
    crop_h = min(shot.height, int(shot.width * view_h / SIZE))
    crop_w = int(crop_h * SIZE / view_h)
    card.paste(shot.crop((0, 0, crop_w, crop_h)).resize((SIZE, view_h), Image.LANCZOS), (0, BAND))
    draw = ImageDraw.Draw(card)
    draw.rectangle([0, 0, SIZE, BAND - 1], fill=BACKGROUND)
    draw.rectangle([0, BAND - 4, SIZE, BAND - 1], fill=ACCENT)
    x, y = 18, 16
    title_font, text_font = _font(26, bold=True), _font(19)
    if badge:
        badge_font = _font(17, bold=True)
        w = draw.textlength(badge, font=badge_font)
        draw.rounded_rectangle([x, y, x + w + 20, y + 28], radius=8, fill=BADGE)
        draw.text((x + 10, y + 4), badge, font=badge_font, fill=(20, 20, 20))
        y += 38
    for line in _wrap(draw, title, title_font, SIZE - 2 * x)[:2]:
        draw.text((x, y), line, font=title_font, fill=(240, 240, 245))
        y += 32
    for line in _wrap(draw, text, text_font, SIZE - 2 * x)[: max(1, (BAND - 10 - y) // 24)]:
        draw.text((x, y), line, font=text_font, fill=(190, 195, 210))
        y += 24
    return card


def write_thumbnail(name, screenshot_path, workflows=ROOT / "workflows"):
    """workflows/<name>.jpg from a screenshot and the layout spec's note title and card line."""
    spec = json.loads((Path(workflows) / "layout" / f"{name}.json").read_text())
    card = spec.get("card") or {}
    image = card_image(Image.open(screenshot_path), spec["note"]["title"], card.get("text", ""), card.get("badge"))
    out = Path(workflows) / f"{name}.jpg"
    image.save(out, quality=85, optimize=True)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    for shot in sorted(Path(argv[0]).glob("*.png")):
        if (ROOT / "workflows" / "layout" / f"{shot.stem}.json").is_file():
            print(write_thumbnail(shot.stem, shot).relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
