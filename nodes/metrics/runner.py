"""Benchmark runner: run an API-format workflow over a PIE-Bench or MagicBrush folder through a
running ComfyUI, score every result with the papers' metrics, write CSV / markdown / plots.

Run it as a script from the pack's folder (the custom-node folder is not an importable package
name, so ``python -m`` does not fit; the script bootstraps the package itself)::

    python nodes/metrics/runner.py --server http://127.0.0.1:8188 \\
        --workflow workflows/api/my_edit.json --data PIE-Bench/data --out runs/pie \\
        --set 6.text=target_prompt --set 7.text=source_prompt --models ComfyUI/models/metrics

Per sample: upload the source image (and the mask as a white-on-black PNG when a ``--set`` asks for
``mask_image``), write it and the sample's texts into the workflow (``--image NODE`` is the
LoadImage that receives the source, default the first LoadImage; ``--set NODE.INPUT=FIELD`` binds
``source_prompt``, ``target_prompt``, ``instruction``, ``blended_word``, ``id``, ``edit_type`` or
``mask_image``), ``POST /prompt``, poll ``/history`` (``--timeout`` seconds, then the prompt is
cancelled), fetch the first image of ``--output NODE`` (default: the first output node with
images) and score it.

OUT holds ``results.csv`` (one row per finished sample, written as it finishes), ``failures.csv``
(sample, error; a failure never stops the run), ``images/<id>.png``, ``summary.md`` (means per
edit type; the papers' rows measured on this benchmark, labelled with their protocol), ``plots/<set>_<metric>.png`` (distribution per edit type) and
``run.json``. Rerunning with the same OUT resumes: samples already in results.csv are skipped;
failed ones are tried again.
"""

if __name__ == "__main__" and not __package__:
    # run as a file: re-enter as a module of the pack (nodes/script_entry.py says why)
    import importlib.util as _util
    import pathlib as _pathlib

    _spec = _util.spec_from_file_location("_contextedit_script_entry",
                                          _pathlib.Path(__file__).resolve().parents[1] / "script_entry.py")
    _entry = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_entry)
    raise SystemExit(_entry.run("nodes.metrics.runner"))

import argparse
import copy
import csv
import io
import json
import math
import os
import time

import numpy as np

from . import references
from .comfy_client import ComfyClient, ComfyError, output_images
from .datasets import LAYOUTS, detect_layout, load_rgb, sample_mask
from .models import MetricModels
from .references import DATASETS
from .report import plot_distributions, reference_notes
from .suites import PROTOCOLS, SUITES, compute, networks_needed, suite_metrics

BASE_COLUMNS = ["id", "edit_type", "status", "seconds", "output"]
DEFAULT_SETS = {"pie": ("pie",), "magicbrush": ("magicbrush",)}
LAYOUT_DATASET = {"pie": "pie", "magicbrush": "magicbrush"}  # folder layout -> references.DATASETS key
UPLOAD_SUBFOLDER = "contextedit_bench"


def metric_columns(sets) -> list:
    return [f"{s}.{m.key}" for s in sets for m in suite_metrics(s)]


def read_done(path: str, columns: list) -> dict:
    """Rows of an existing results.csv by id (a half-written last row of a killed run is ignored)."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return {}
        if header != columns:
            raise SystemExit(f"{path} was written for other metrics ({header[len(BASE_COLUMNS):]}); "
                             f"use another --out or the same --metrics")
        return {row[0]: dict(zip(header, row)) for row in reader if len(row) == len(header) and row[2] == "ok"}


def bind(workflow: dict, sample, uploaded: dict, image_node: str, settings: list) -> dict:
    graph = copy.deepcopy(workflow)
    graph[image_node]["inputs"]["image"] = uploaded["image"]
    values = dict(sample.fields(), **uploaded)
    for node, name, field in settings:
        if node not in graph:
            raise ValueError(f"--set {node}.{name}: node {node} is not in the workflow")
        if field not in values:
            raise ValueError(f"--set {node}.{name}={field}: unknown field (use one of {sorted(values)})")
        graph[node]["inputs"][name] = values[field]
    return graph


def parse_set(text: str):
    try:
        target, field = text.split("=", 1)
        node, name = target.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected NODE.INPUT=FIELD, e.g. 6.text=target_prompt") from None
    return node.strip(), name.strip(), field.strip()


def first_node(workflow: dict, class_type: str):
    ids = sorted((k for k, v in workflow.items() if v.get("class_type") == class_type), key=lambda k: (len(k), k))
    return ids[0] if ids else None


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def summarise(rows: list, sets, out_dir: str, failures: list, dataset: str | None = None) -> str:
    """summary.md (means per edit type and overall, reported scales, the papers' rows measured on
    ``dataset`` -- a references.DATASETS key; none when it is None) and the plots."""
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    groups = sorted({r["edit_type"] for r in rows})
    lines = ["# Benchmark summary", "", f"{len(rows)} samples scored, {len(failures)} failed.", ""]
    for suite in sets:
        metrics = suite_metrics(suite)
        lines += [f"## {SUITES[suite][0]}", "",
                  "| edit type | n | " + " | ".join(f"{m.label}{f' ({m.unit})' if m.unit else ''}" for m in metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        values = [{m.key: _float(r.get(f"{suite}.{m.key}")) for m in metrics} | {"edit_type": r["edit_type"]}
                  for r in rows]
        for group in groups + ["all"]:
            members = [v for v in values if group == "all" or v["edit_type"] == group]
            cells = []
            for m in metrics:
                finite = [v[m.key] for v in members if not math.isnan(v[m.key])]
                cells.append(_fmt(float(np.mean(finite)) * m.scale) if finite else "n/a")
            name = f"**{group}**" if group == "all" else group
            lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")
        published = references.rows(suite, dataset) if dataset else []
        for row in published:
            cells = [_fmt(row.values.get(m.key)) for m in metrics]
            lines.append(f"| paper: {row.method} | | " + " | ".join(cells) + " |")
        lines += ["", f"Ours: {PROTOCOLS[suite]}."]
        if published:
            lines += ["Papers' rows:"] + reference_notes(suite, dataset)
        elif references.rows(suite):
            measured = sorted({DATASETS[r.dataset] for r in references.rows(suite)})
            lines.append(f"No published {SUITES[suite][0]} rows on "
                         f"{DATASETS[dataset] if dataset else 'this data'}: the papers measured them on "
                         f"{', '.join(measured)}.")
        lines.append("")
        for m in metrics:
            plot_distributions(values, suite, m, "edit_type", os.path.join(out_dir, "plots", f"{suite}_{m.key}.png"),
                               dataset=dataset or "")
    if failures:
        lines += ["## Failures", ""] + [f"- {f['id']}: {f['error']}" for f in failures] + [""]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    return text


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI URL")
    p.add_argument("--workflow", required=True, help="API-format workflow JSON (File > Export (API))")
    p.add_argument("--data", required=True, help="benchmark folder (PIE-Bench or MagicBrush layout)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), help="folder layout (default: detected)")
    p.add_argument("--out", required=True, help="output folder (reused to resume)")
    p.add_argument("--metrics", help="comma-separated metric sets: pie, magicbrush, emu, emu_crop, pixel "
                                     "(default: the layout's own set)")
    p.add_argument("--models", action="append", default=[], help="folder with the metric networks "
                   "(as ComfyUI/models/metrics; repeatable)")
    p.add_argument("--image", help="id of the LoadImage node that receives the source (default: the first)")
    p.add_argument("--output", help="id of the node whose image is the result (default: first with images)")
    p.add_argument("--set", dest="settings", action="append", type=parse_set, default=[],
                   help="NODE.INPUT=FIELD: write a sample field into a workflow input (repeatable)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per sample before it is cancelled")
    p.add_argument("--limit", type=int, help="first N samples only")
    p.add_argument("--types", help="comma-separated edit types to run (PIE-Bench type ids, e.g. 0,1,9)")
    p.add_argument("--device", default="cpu", help="device for the metric networks (cpu, cuda, ...)")
    return p


def main(argv=None) -> int:
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    with open(args.workflow, encoding="utf-8") as handle:
        workflow = json.load(handle)
    if not isinstance(workflow, dict) or not all(isinstance(v, dict) and "class_type" in v for v in workflow.values()):
        raise SystemExit(f"{args.workflow} is not an API-format workflow (export it with 'Export (API)')")
    layout = args.layout or detect_layout(args.data)
    sets = tuple(s.strip() for s in args.metrics.split(",")) if args.metrics else DEFAULT_SETS[layout]
    for s in sets:
        suite_metrics(s)
    image_node = args.image or first_node(workflow, "LoadImage")
    if image_node not in workflow:
        raise SystemExit("no LoadImage node for the source image: pass --image NODE")
    samples = LAYOUTS[layout](args.data)
    if args.types:
        wanted = {t.strip() for t in args.types.split(",")}
        samples = [s for s in samples if s.edit_type.split(" ")[0] in wanted or s.edit_type in wanted]
    if args.limit:
        samples = samples[:args.limit]
    needs_models = any(networks_needed(s) for s in sets)
    if needs_models and not args.models:
        raise SystemExit(f"metric sets {sets} need networks: pass --models DIR (the files of models/metrics)")
    models = MetricModels.from_dirs(args.models, device=args.device) if needs_models else None
    if needs_models:  # fail now, not at every sample, when a file is missing
        from .models import locate

        for network in sorted({n for s in sets for n in networks_needed(s)}):
            locate(network, models.fp)

    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    columns = BASE_COLUMNS + metric_columns(sets)
    results_path = os.path.join(args.out, "results.csv")
    done = read_done(results_path, columns)
    if not os.path.isfile(results_path) or os.path.getsize(results_path) == 0:
        with open(results_path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(columns)
    failures_path = os.path.join(args.out, "failures.csv")
    with open(failures_path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(["id", "edit_type", "error"])

    client = ComfyClient(args.server)
    failures, ran, t_start = [], 0, time.monotonic()
    todo = [s for s in samples if s.id not in done]
    progress = tqdm(todo, desc="samples", unit="sample", initial=0, total=len(todo))
    for sample in progress:
        t0 = time.monotonic()
        try:
            source = load_rgb(sample.image)
            uploaded = {"image": client.upload_image(png_bytes(source), f"{sample.id}.png", UPLOAD_SUBFOLDER)}
            mask = sample_mask(sample, *source.shape[:2])
            if any(field == "mask_image" for _, _, field in args.settings):
                if mask is None:
                    raise ValueError("the workflow wants mask_image but the sample has no mask")
                uploaded["mask_image"] = client.upload_image(
                    png_bytes((np.repeat(mask[..., None], 3, 2) * 255).astype(np.uint8)),
                    f"{sample.id}_mask.png", UPLOAD_SUBFOLDER)
            entry = client.wait(client.queue(bind(workflow, sample, uploaded, image_node, args.settings)),
                                timeout=args.timeout)
            refs = output_images(entry, args.output)
            if not refs:
                raise ComfyError(f"the workflow produced no image (output node {args.output or 'any'})")
            data = client.view(refs[0]["filename"], refs[0].get("subfolder", ""), refs[0].get("type", "output"))
            out_path = os.path.join(args.out, "images", f"{sample.id}.png")
            with open(out_path, "wb") as handle:
                handle.write(png_bytes(decode_image(data)))
            edited = decode_image(data)
            reference = load_rgb(sample.reference) if sample.reference and os.path.isfile(sample.reference) else None
            row = {"id": sample.id, "edit_type": sample.edit_type, "status": "ok",
                   "seconds": f"{time.monotonic() - t0:.3f}", "output": os.path.relpath(out_path, args.out)}
            for s in sets:
                values = compute(s, source, edited, models, mask=mask, reference=reference,
                                 source_caption=sample.source_prompt, target_caption=sample.target_prompt)
                row.update({f"{s}.{k}": repr(float(v)) for k, v in values.items()})
            with open(results_path, "a", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow([row[c] for c in columns])
                handle.flush()
                os.fsync(handle.fileno())
            done[sample.id] = row
            ran += 1
        except Exception as error:  # noqa: BLE001 - a failing sample is listed, never stops the run
            failure = {"id": sample.id, "edit_type": sample.edit_type, "error": f"{type(error).__name__}: {error}"}
            failures.append(failure)
            with open(failures_path, "a", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow([failure["id"], failure["edit_type"], failure["error"]])
        progress.set_postfix(ok=ran, failed=len(failures))
    progress.close()
    elapsed = time.monotonic() - t_start
    rows = [done[s.id] for s in samples if s.id in done]
    summarise(rows, sets, args.out, failures, LAYOUT_DATASET.get(layout))
    run = {"samples": len(samples), "skipped_done": len(samples) - len(todo), "ran": ran, "failed": len(failures),
           "seconds": round(elapsed, 3), "failures": failures}
    with open(os.path.join(args.out, "run.json"), "w", encoding="utf-8") as handle:
        json.dump(run, handle, indent=2)
    print(f"{ran} ran, {run['skipped_done']} already done, {len(failures)} failed "
          f"({elapsed:.1f} s); summary: {os.path.join(args.out, 'summary.md')}")
    for failure in failures:
        print(f"  FAILED {failure['id']}: {failure['error']}")
    return 0
