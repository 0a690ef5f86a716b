"""The per-stage loop every pipeline stage shares.

One *item* is one source image (its id is the file stem). A stage reads what earlier stages wrote
for the item and writes ``OUT/<stage>/<id>.json`` (plus any images) and nothing else, so:

- **resumable**: an item whose output file exists is skipped; outputs are written to a temporary
  file and renamed into place, so a killed run never leaves a half-written file that looks done;
- **failures never stop the run**: any exception while processing an item (a corrupt image, an
  unreadable model reply, a schema violation) is appended as one JSON line to
  ``OUT/failures/<stage>.jsonl`` (``<stage>.rank<R>.jsonl`` when several processes run) and the
  loop goes on; a failed item has no output, so the next run tries it again;
- **deterministic**: each item gets ``seed = item_seed(base_seed, stage, id)`` (a hash, so the
  same item gets the same seed whatever the order, ``--limit`` or the number of processes);
- **data-parallel**: with ``RANK`` / ``WORLD_SIZE`` set (``accelerate launch`` and ``torchrun``
  set them) process R takes items R, R+W, R+2W, ... of the sorted list; ``--limit N`` keeps the
  first N items of that list before it is split;
- a tqdm progress bar per process (position = rank).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

FAILURES = "failures"


def item_seed(base_seed: int, stage: str, item_id: str) -> int:
    """A 31-bit seed fixed by (base seed, stage, item id)."""
    digest = hashlib.sha256(f"{int(base_seed)}/{stage}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def dist_rank_world(environ=None) -> tuple[int, int]:
    """(rank, world size) from RANK / WORLD_SIZE (accelerate, torchrun); (0, 1) when unset."""
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ValueError("RANK / WORLD_SIZE must be integers (as accelerate launch / torchrun set them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


def shard(ids: Iterable[str], limit: int | None = None, rank: int = 0, world: int = 1) -> list:
    """This process's item ids: sorted, the first ``limit``, then every ``world``-th from ``rank``."""
    ordered = sorted(set(ids))
    if limit is not None:
        if limit < 0:
            raise ValueError(f"--limit must be >= 0, got {limit}")
        ordered = ordered[:limit]
    return ordered[rank::world]


def write_json_atomic(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_image_atomic(image, path) -> None:
    """Save a PIL image (format from the suffix) through a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    image.save(tmp)
    os.replace(tmp, path)


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def failure_log_path(out_dir, stage: str, rank: int = 0, world: int = 1) -> Path:
    name = f"{stage}.jsonl" if world == 1 else f"{stage}.rank{rank}.jsonl"
    return Path(out_dir) / FAILURES / name


def read_failures(out_dir, stage: str) -> list:
    """Every failure record of a stage, all ranks."""
    folder = Path(out_dir) / FAILURES
    records = []
    for path in sorted(folder.glob(f"{stage}.jsonl")) + sorted(folder.glob(f"{stage}.rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


@dataclass
class StageReport:
    stage: str
    done: list = field(default_factory=list)      # ids processed now
    skipped: list = field(default_factory=list)   # ids whose output already existed
    failed: list = field(default_factory=list)    # ids that raised
    seconds: float = 0.0

    @property
    def items_per_second(self) -> float:
        return len(self.done) / self.seconds if self.seconds > 0 else 0.0


def run_stage(stage: str, ids: Iterable[str], output_of: Callable[[str], Path],
              process: Callable[[str, int], dict], out_dir, *, seed: int = 0,
              limit: int | None = None, rank: int | None = None, world: int | None = None,
              validate: Callable[[dict], None] | None = None, progress: bool = True,
              log: Callable[[str], None] | None = print) -> StageReport:
    """Run ``process(item_id, seed) -> record`` over this process's share of ``ids``.

    The record is checked with ``validate`` and written to ``output_of(item_id)``. ``rank`` /
    ``world`` default to the RANK / WORLD_SIZE environment.
    """
    if rank is None or world is None:
        rank, world = dist_rank_world()
    mine = shard(ids, limit, rank, world)
    report = StageReport(stage)
    failures = failure_log_path(out_dir, stage, rank, world)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=stage if world == 1 else f"{stage} [{rank}/{world}]",
                   position=rank, leave=True, dynamic_ncols=True)
    try:
        for item_id in mine:
            target = Path(output_of(item_id))
            if target.is_file():
                report.skipped.append(item_id)
            else:
                try:
                    record = process(item_id, item_seed(seed, stage, item_id))
                    if validate is not None:
                        validate(record)
                    write_json_atomic(target, record)
                    report.done.append(item_id)
                except KeyboardInterrupt:
                    raise
                except Exception as error:  # noqa: BLE001 - one bad item must not stop the run
                    report.failed.append(item_id)
                    failures.parent.mkdir(parents=True, exist_ok=True)
                    entry = {"stage": stage, "item": item_id, "error": type(error).__name__,
                             "message": str(error), "rank": rank,
                             "where": traceback.format_exc(limit=-1).strip().splitlines()[-3:-1],
                             "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                    with open(failures, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - start
    if log is not None:
        log(f"{stage}: {len(report.done)} done, {len(report.skipped)} already done, "
            f"{len(report.failed)} failed" + (f" (see {failures})" if report.failed else ""))
    return report
