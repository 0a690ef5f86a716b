"""Training CLI for the region predictor ("Beyond Editing Pairs", section 4: text-image pairs only).

Run it as a script from the pack's folder (the custom-node folder is not an importable package
name, so ``python -m`` does not fit; the script bootstraps the package itself)::

    # 1. fill in instruction / target caption (LLM or a deterministic template), missing captions
    #    (VLM), and the frozen generator's image for the target caption (diffusers SD folder)
    python nodes/regions/train.py prepare --data DATA [--llm models/LLM/Qwen2.5-3B-Instruct] \
        [--vlm models/LLM/Qwen2.5-VL-3B-Instruct] --generator path/to/stable-diffusion-v1-5

    # 2. train (same command on one CPU or, via ``accelerate launch``, on several GPUs)
    python nodes/regions/train.py train --data DATA --clip-vision models/clip_vision/clip-vit-large-patch14 \
        --clip-text path/to/clip-vit-large-patch14 --text-encoder models/text_encoders/flan-t5-base \
        --out runs/region --steps 20000 --batch-size 16 [--resume]
    accelerate launch nodes/regions/train.py train ...           # multi-GPU, same arguments

Dataset: ``DATA/metadata.jsonl``, one JSON object per line::

    {"image": "cat.jpg", "caption": "a cat on a sofa",            # t_o (VLM-written if missing)
     "instruction": "turn the cat into a dog",                   # t_ins (LLM / template)
     "target_caption": "a dog on a sofa",                        # t_e  (LLM / template)
     "edited": "generated/cat.png"}                              # G(X, t_e), frozen generator

Paths are relative to DATA. Without metadata.jsonl, ``prepare`` lists the images in DATA.

Output folder: ``region_predictor.safetensors`` (the head, config in its metadata: load it with
``RegionPredictor.load``), ``checkpoints/step_N.safetensors``, ``state/`` (accelerate state for
``--resume``), ``log.jsonl`` and ``log.csv`` (every loss term per logged step).
"""

if __name__ == "__main__" and not __package__:
    # run as a file: re-enter as a module of the pack (nodes/script_entry.py says why)
    import importlib.util as _util
    import pathlib as _pathlib

    _spec = _util.spec_from_file_location("_contextedit_script_entry",
                                          _pathlib.Path(__file__).resolve().parents[1] / "script_entry.py")
    _entry = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_entry)
    raise SystemExit(_entry.run("nodes.regions.train"))

import argparse
import csv
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from ..errors import InputError
from .losses import LossWeights
from .model import RegionPredictor

METADATA = "metadata.jsonl"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Deterministic fallback edits (no LLM): (instruction, target caption built from the caption).
TEMPLATE_EDITS = (
    ("add a red hat", "{caption}, with a red hat"),
    ("make it snowy", "{caption}, covered in snow"),
    ("turn it into a watercolor painting", "a watercolor painting of {caption}"),
    ("make it night time", "{caption} at night"),
    ("add a small dog", "{caption}, with a small dog"),
    ("make the colors golden", "{caption}, in golden light"),
)

LLM_PROMPT = (
    "Image description: \"{caption}\"\n"
    "Invent one realistic local edit of this image. Reply with JSON only: "
    "{{\"instruction\": \"<imperative edit instruction>\", \"target_caption\": \"<description of the edited image>\"}}"
)
VLM_PROMPT = "Describe this image in one short sentence."


# --------------------------------------------------------------------------- dataset file


def read_metadata(data_dir) -> list:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError("data", f"'{data_dir}' is not a folder.", "Pass the dataset folder.")
    path = data_dir / METADATA
    if not path.is_file():
        images = sorted(p.name for p in data_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        return [{"image": name} for name in images]
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise InputError("data", f"{path.name} line {number} is not JSON ({error}).", "Fix that line.") from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise InputError("data", f"{path.name} line {number} has no \"image\" path.", "Add one.")
        records.append(record)
    return records


def write_metadata(data_dir, records) -> Path:
    path = Path(data_dir) / METADATA
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)
    return path


def template_edit(caption: str) -> tuple:
    """A deterministic (instruction, target caption) for a caption: same caption, same edit."""
    caption = caption.strip().rstrip(".")
    index = int(hashlib.sha256(caption.encode("utf-8")).hexdigest(), 16) % len(TEMPLATE_EDITS)
    instruction, target = TEMPLATE_EDITS[index]
    return instruction, target.format(caption=caption)


def parse_llm_edit(text: str):
    """(instruction, target caption) from an LLM reply, or None when it holds no usable pair."""
    from ..executability.lenient_json import find_values

    for found in find_values(text or ""):
        value = getattr(found, "value", found)
        if isinstance(value, dict):
            ins, tgt = value.get("instruction"), value.get("target_caption")
            if isinstance(ins, str) and ins.strip() and isinstance(tgt, str) and tgt.strip():
                return ins.strip(), tgt.strip()
    return None


class LocalLLM:
    """A text-only chat LLM from a local folder (transformers, local files only), greedy."""

    def __init__(self, path, max_new_tokens: int = 96):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = prompt
        inputs = self.tokenizer(text, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


class Img2ImgGenerator:
    """The frozen generator G(X, t_e): a local diffusers Stable Diffusion folder run as img2img."""

    def __init__(self, path, steps: int = 30, strength: float = 0.75, guidance: float = 7.5, seed: int = 0):
        from diffusers import StableDiffusionImg2ImgPipeline

        self.pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(path), local_files_only=True,
                                                                   safety_checker=None, requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.strength, self.guidance, self.seed = steps, strength, guidance, seed

    def __call__(self, image, prompt: str):
        generator = torch.Generator().manual_seed(self.seed)
        size = image.size
        side = max(64, 8 * round(min(512, max(size)) / 8))
        result = self.pipe(prompt=prompt, image=image.convert("RGB").resize((side, side)), strength=self.strength,
                           num_inference_steps=self.steps, guidance_scale=self.guidance, generator=generator).images[0]
        return result.resize(size)


def prepare(data_dir, llm=None, vlm=None, generator=None, overwrite: bool = False, log=print) -> list:
    """Fill caption (VLM), instruction + target_caption (LLM or template) and edited (generator).

    ``llm`` / ``vlm`` / ``generator``: folder paths or ready callables (llm: prompt -> text, vlm:
    PIL -> caption, generator: (PIL, prompt) -> PIL). Rewrites DATA/metadata.jsonl; returns it."""
    from PIL import Image

    data_dir = Path(data_dir)
    records = read_metadata(data_dir)
    if not records:
        raise InputError("data", f"'{data_dir}' holds no images and no {METADATA}.", "Add images.")
    if isinstance(llm, (str, os.PathLike)):
        llm = LocalLLM(llm)
    if isinstance(vlm, (str, os.PathLike)):
        from ..executability.vlm_runtime import load_vlm

        model = load_vlm(str(vlm), device="cpu" if not torch.cuda.is_available() else None, input_name="vlm")
        vlm = lambda image: model.generate(image, VLM_PROMPT, max_new_tokens=40).text
    if isinstance(generator, (str, os.PathLike)):
        generator = Img2ImgGenerator(generator)
    for record in records:
        image_path = data_dir / record["image"]
        if not image_path.is_file():
            raise InputError("data", f"image '{record['image']}' does not exist.", "Fix metadata.jsonl.")
        image = None
        # --overwrite re-captions only when a VLM is given: user-written captions are the ground truth
        if (overwrite and vlm is not None) or not str(record.get("caption") or "").strip():
            if vlm is None:
                raise InputError("vlm", f"'{record['image']}' has no caption and no VLM was given.",
                                 "Pass --vlm <Qwen2.5-VL folder> or write captions into metadata.jsonl.")
            image = Image.open(image_path).convert("RGB")
            caption = " ".join(str(vlm(image)).split())[:300]
            record["caption"] = caption or "a photo"
            record["caption_source"] = "vlm"
        if overwrite or not str(record.get("instruction") or "").strip() or not str(record.get("target_caption")
                                                                                     or "").strip():
            pair = parse_llm_edit(llm(LLM_PROMPT.format(caption=record["caption"]))) if llm is not None else None
            record["edit_source"] = "llm" if pair else "template"
            record["instruction"], record["target_caption"] = pair or template_edit(record["caption"])
        if generator is not None and (overwrite or not record.get("edited")):
            image = image or Image.open(image_path).convert("RGB")
            out = Path("generated") / (Path(record["image"]).stem + ".png")
            (data_dir / out).parent.mkdir(parents=True, exist_ok=True)
            generator(image, record["target_caption"]).save(data_dir / out)
            record["edited"] = out.as_posix()
    write_metadata(data_dir, records)
    log(f"prepared {len(records)} samples in {data_dir / METADATA}")
    return records


# --------------------------------------------------------------------------- training


class RegionDataset(torch.utils.data.Dataset):
    """Samples of a prepared folder: images resized to ``image_size`` square, 0..1 [3, S, S]."""

    def __init__(self, data_dir, image_size: int = 224):
        self.data_dir = Path(data_dir)
        self.image_size = int(image_size)
        self.records = read_metadata(self.data_dir)
        if not self.records:
            raise InputError("data", f"'{data_dir}' holds no samples.", "Run prepare on a folder of images.")
        for record in self.records:
            for key in ("caption", "instruction", "target_caption", "edited"):
                if not str(record.get(key) or "").strip():
                    raise InputError("data", f"sample '{record['image']}' has no '{key}'.",
                                     "Run: python nodes/regions/train.py prepare --data DATA --generator <SD folder>.")

    def __len__(self):
        return len(self.records)

    def _load(self, rel):
        import numpy as np
        from PIL import Image

        image = Image.open(self.data_dir / rel).convert("RGB").resize((self.image_size, self.image_size),
                                                                      Image.BICUBIC)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255.0)

    def __getitem__(self, index):
        r = self.records[index]
        return {"source": self._load(r["image"]), "generated": self._load(r["edited"]), "caption": r["caption"],
                "instruction": r["instruction"], "target_caption": r["target_caption"]}


def collate(items):
    return {"source": torch.stack([i["source"] for i in items]),
            "generated": torch.stack([i["generated"] for i in items]),
            **{k: [i[k] for i in items] for k in ("caption", "instruction", "target_caption")}}


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list:
    """This process's batches of one epoch: a seeded permutation, sharded by rank (deterministic, so
    a resumed run sees exactly the batches an uninterrupted one would)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch)).tolist()
    per_step = batch_size * world
    steps = max(1, n // per_step) if n >= per_step else 1
    batches = []
    for s in range(steps):
        chunk = [order[(s * per_step + j) % n] for j in range(per_step)]
        batches.append(chunk[rank * batch_size:(rank + 1) * batch_size])
    return batches


def load_encoders(args, device):
    from .encoders import ClipTextEncoder, ClipVisionEncoder, T5InstructionEncoder
    from .objective import RegionEncoders

    return RegionEncoders(
        vision=ClipVisionEncoder.load(args.clip_vision, config=args.clip_vision_config, device=device),
        instruction=T5InstructionEncoder.load(args.text_encoder, device=device),
        text=ClipTextEncoder.load(args.clip_text, device=device),
    )


def train(args, encoders=None) -> Path:
    """Train a head as ``args`` (the parsed ``train`` command) say; ``encoders`` (a RegionEncoders)
    replaces the ones named by --clip-vision / --clip-text / --text-encoder when given."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .objective import encode_batch, region_losses

    accelerator = Accelerator(cpu=args.cpu)
    out = Path(args.out)
    if accelerator.is_main_process:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    dataset = RegionDataset(args.data, args.image_size)
    if encoders is None:
        encoders = load_encoders(args, accelerator.device)
    overrides = {k: getattr(args, k) for k in ("d_model", "num_heads", "mlp_hidden", "sem_hidden", "threshold")
                 if getattr(args, k) is not None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = RegionPredictor(encoders.predictor_config(**overrides))
    encoders.check(model)
    weights = loss_weights(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    state_dir = out / "state"
    start = 0
    if args.resume and (state_dir / "trainer.json").is_file():
        accelerator.load_state(str(state_dir))
        start = json.loads((state_dir / "trainer.json").read_text())["step"]
        accelerator.print(f"resumed from step {start}")
    elif args.resume:
        accelerator.print(f"no state in {state_dir}; starting from scratch")

    def save(step):
        accelerator.wait_for_everyone()
        accelerator.save_state(str(state_dir))
        if accelerator.is_main_process:
            (state_dir / "trainer.json").write_text(json.dumps({"step": step}))
            head = accelerator.unwrap_model(model)
            meta = {"step": step, "loss_weights": json.dumps(weights.as_dict())}
            head.save(out / "checkpoints" / f"step_{step}.safetensors", meta)
            head.save(out / "region_predictor.safetensors", meta)

    log_jsonl = out / "log.jsonl"
    log_csv = out / "log.csv"
    fields = ["step", "epoch", "samples_per_s", "lr", "total", "semAlign", "semEdited", "semOriginal", "CLIP",
              "CLIPg", "CLIPd", "CLIPs", "region_mean"]
    if accelerator.is_main_process and (start == 0 or not log_csv.is_file()):
        for f in (log_jsonl, log_csv):
            f.unlink(missing_ok=True)
        with open(log_csv, "w", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fields).writeheader()
    per_epoch = len(epoch_batches(len(dataset), args.batch_size, 0, args.seed, 0, accelerator.num_processes))
    progress = tqdm(total=args.steps, initial=start, disable=not accelerator.is_local_main_process,
                    desc="region predictor", dynamic_ncols=True)
    model.train()
    step, tick, seen = start, time.perf_counter(), 0
    while step < args.steps:
        epoch, offset = divmod(step, per_epoch)
        batches = epoch_batches(len(dataset), args.batch_size, epoch, args.seed, accelerator.process_index,
                                accelerator.num_processes)
        for indices in batches[offset:]:
            if step >= args.steps:
                break
            raw = collate([dataset[i] for i in indices])
            batch = encode_batch(encoders, raw["source"].to(accelerator.device), raw["instruction"], raw["caption"],
                                 raw["target_caption"], raw["generated"].to(accelerator.device))
            with accelerator.autocast():
                loss, terms, _ = region_losses(model, encoders.vision, batch, weights)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            step += 1
            seen += len(indices) * accelerator.num_processes
            progress.update(1)
            if step % args.log_every == 0 or step == args.steps:
                terms = {k: float(accelerator.reduce(v.float(), reduction="mean")) for k, v in terms.items()}
                now = time.perf_counter()
                row = {"step": step, "epoch": epoch, "samples_per_s": round(seen / max(now - tick, 1e-9), 3),
                       "lr": args.lr, **{k: round(v, 6) for k, v in terms.items()}}
                tick, seen = now, 0
                progress.set_postfix(loss=f"{terms['total']:.4f}")
                if accelerator.is_main_process:
                    with open(log_jsonl, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row) + "\n")
                    with open(log_csv, "a", newline="") as handle:
                        csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore").writerow(row)
            if args.save_every and step % args.save_every == 0 and step < args.steps:
                save(step)
    progress.close()
    save(step)
    accelerator.end_training()
    return out / "region_predictor.safetensors"


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python nodes/regions/train.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write instruction / target caption / captions / generated images")
    p.add_argument("--data", required=True, help="dataset folder (images + metadata.jsonl)")
    p.add_argument("--llm", help="local text LLM folder (e.g. Qwen2.5-3B-Instruct); default: template edits")
    p.add_argument("--vlm", help="local VLM folder (e.g. Qwen2.5-VL) for images without a caption")
    p.add_argument("--generator", help="local diffusers Stable Diffusion folder, run as img2img for t_e")
    p.add_argument("--generator-steps", type=int, default=30, help="img2img denoising steps")
    p.add_argument("--generator-strength", type=float, default=0.75, help="img2img strength")
    p.add_argument("--overwrite", action="store_true", help="regenerate fields that are already filled")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")

    t = sub.add_parser("train", help="train the region predictor")
    t.add_argument("--data", required=True)
    t.add_argument("--clip-vision", required=True, help="CLIP vision HF folder or .safetensors file")
    t.add_argument("--clip-vision-config", help="config.json for a single-file CLIP vision model")
    t.add_argument("--clip-text", required=True, help="CLIP folder with the text tower + tokenizer")
    t.add_argument("--text-encoder", required=True, help="FLAN-T5 folder (instruction encoder)")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--max-grad-norm", type=float, default=1.0)
    t.add_argument("--image-size", type=int, default=224, help="images are resized to this square")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--resume", action="store_true", help="continue from OUT/state if it exists")
    t.add_argument("--cpu", action="store_true", help="force CPU even when a GPU is present")
    t.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    for name in ("d_model", "num_heads", "mlp_hidden", "sem_hidden"):
        t.add_argument("--" + name.replace("_", "-"), type=int, default=None, dest=name)
    t.add_argument("--threshold", type=float, default=None)
    defaults = LossWeights()
    for name, equation in LOSS_WEIGHT_HELP.items():
        t.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name), dest=name,
                       help=f"{equation} (default: %(default)s, LossWeights' default)")
    return parser


LOSS_WEIGHT_HELP = {
    "alpha": "weight of L_semAlign in eq. 11",
    "beta": "weight of L_CLIP in eq. 11",
    "lambda_g": "weight of L_CLIPg (eq. 7) in eq. 10",
    "lambda_d": "weight of L_CLIPd (eq. 8) in eq. 10",
    "lambda_s": "weight of L_CLIPs (eq. 9, mean over patch pairs) in eq. 10",
}


def loss_weights(args) -> LossWeights:
    """The LossWeights the parsed flags ask for (each flag defaults to LossWeights' own default)."""
    return LossWeights(**{name: float(getattr(args, name)) for name in LOSS_WEIGHT_HELP})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "num_threads", 0):
            torch.set_num_threads(args.num_threads)
        if args.command == "prepare":
            generator = args.generator and Img2ImgGenerator(args.generator, args.generator_steps, args.generator_strength)
            prepare(args.data, llm=args.llm, vlm=args.vlm, generator=generator or None, overwrite=args.overwrite)
        else:
            path = train(args)
            print(f"saved {path}")
    except InputError as error:
        print(f"error: {error}")
        return 2
    return 0
