"""Draw a same-name .jpg thumbnail for every UI workflow in workflows/ (ComfyUI's template browser
shows it): the graph's nodes at their positions, titled, with their links.

    python tools/make_thumbnails.py
"""

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
W, H = 768, 432
OURS = (64, 110, 200)
CORE = (70, 70, 78)


def draw(workflow: dict, out: Path):
    nodes = workflow["nodes"]
    xs = [n["pos"][0] for n in nodes] + [n["pos"][0] + 320 for n in nodes]
    ys = [n["pos"][1] for n in nodes] + [n["pos"][1] + 180 for n in nodes]
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    scale = min((W - 40) / (x1 - x0), (H - 40) / (y1 - y0))
    img = Image.new("RGB", (W, H), (24, 24, 28))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    def box(n):
        x, y = (n["pos"][0] - x0) * scale + 20, (n["pos"][1] - y0) * scale + 20
        return x, y, x + 300 * scale, y + 150 * scale

    by_id = {n["id"]: n for n in nodes}
    for _, src, _, dst, _, _ in workflow["links"]:
        a, b = box(by_id[src]), box(by_id[dst])
        d.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(150, 150, 160), width=2)
    for n in nodes:
        x, y, x2, y2 = box(n)
        colour = OURS if n["type"].startswith("ContextEdit") else CORE
        d.rounded_rectangle([x, y, x2, y2], radius=6, fill=colour, outline=(200, 200, 210))
        title = n.get("title") or n["type"]
        words, lines, line = title.split(), [], ""
        for w in words:
            if len(line) + len(w) + 1 > max(8, int((x2 - x) / 6.2)):
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        for i, text in enumerate(lines[:4]):
            d.text((x + 4, y + 3 + 11 * i), text, fill=(240, 240, 245), font=font)
    img.save(out, quality=90)


def main():
    for path in sorted((ROOT / "workflows").glob("*.json")):
        draw(json.loads(path.read_text()), path.with_suffix(".jpg"))
        print(path.with_suffix(".jpg").relative_to(ROOT))


if __name__ == "__main__":
    main()
