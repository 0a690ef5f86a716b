"""Run the data-pipeline CLI in a subprocess with the tiny models and scripted VLM replies.

    python tests/datagen_script.py CACHE_DIR CALL_LOG [cli arguments...]

The VLM's replies follow datagen_common.default_reply, except for images whose (width, height)
is listed in DATAGEN_UNREADABLE_GROUND (e.g. "80x64"): their grounding reply is prose. Every VLM
call is appended to CALL_LOG as "kind WxH". DATAGEN_SLOW adds that many seconds per call, so a
test can kill the run midway.
"""

import importlib.util
import os
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _load_pack():
    root = TESTS.parent
    if "contextedit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("contextedit", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["contextedit"] = pack
        spec.loader.exec_module(pack)
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def main(argv) -> int:
    _load_pack()
    import torch
    from contextedit.nodes.datagen import cli
    from contextedit.nodes.datagen.inpaint import Inpainter
    from contextedit.nodes.masks.sam import load_sam
    from datagen_common import ScriptedVLM, default_reply, tiny_sam_path, tiny_vlm
    from fixtures.tiny_inpaint import (
        make_tiny_inpaint_folder,
        make_tiny_inpaint_single_file,
    )

    cache, call_log, cli_args = argv[0], argv[1], argv[2:]
    unreadable = {tuple(int(v) for v in s.split("x"))
                  for s in os.environ.get("DATAGEN_UNREADABLE_GROUND", "").split(",") if s}
    slow = float(os.environ.get("DATAGEN_SLOW", "0"))

    def script(kind, size, input_size, prompt):
        with open(call_log, "a") as handle:
            handle.write(f"{kind} {size[0]}x{size[1]}\n")
        time.sleep(slow)
        if kind == "ground" and tuple(size) in unreadable:
            return "I am not sure where anything is."
        return default_reply(kind, size, input_size, prompt)

    torch.set_num_threads(1)
    vlm = ScriptedVLM(tiny_vlm(cache), script)
    inpainter = Inpainter(make_tiny_inpaint_single_file(cache), config=make_tiny_inpaint_folder(cache),
                          device="cpu", steps=2, resolution=64)
    return cli.main(cli_args, vlm=vlm, sam=load_sam(tiny_sam_path(cache)), inpainter=inpainter)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
