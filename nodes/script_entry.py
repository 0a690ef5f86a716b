"""Run one of the pack's CLI files (``python nodes/regions/train.py ...``) as a module of the pack.

The custom-node folder's name is whatever the user cloned it as, so it is not importable as a
package; a CLI file run directly loads this file by path and calls :func:`run`, which registers the
folder as package ``contextedit`` (without executing its ``__init__``, ComfyUI's entry point) and
re-enters through ``contextedit.<module>.main``.
"""

import importlib
import importlib.machinery
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(module: str) -> int:
    if "contextedit" not in sys.modules:
        spec = importlib.machinery.ModuleSpec("contextedit", None, is_package=True)
        pack = importlib.util.module_from_spec(spec)
        pack.__path__ = [str(ROOT)]
        sys.modules["contextedit"] = pack
    return importlib.import_module(f"contextedit.{module}").main()
