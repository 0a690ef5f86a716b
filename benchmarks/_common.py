"""Shared bits of the benchmark scripts: load the checkout as package ``contextedit`` and make
the test fixtures (tiny model factories) importable."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_pack():
    if "contextedit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("contextedit", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["contextedit"] = mod
        spec.loader.exec_module(mod)
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return sys.modules["contextedit"]
