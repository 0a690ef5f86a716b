"""Every float tolerance in the tests says what it bounds and why that size.

A tolerance tuned until one torch build on one CPU passed is not a tolerance (a MAG test broke
that way when the registry's torch moved from 2.13 to 2.14). So every comparison with a float
tolerance (``atol``/``rtol``, ``allclose``, ``assert_close``, ``pytest.approx``, or ``<``/``<=``
against a literal like ``1e-5``) must carry a comment on its line or on one of the few lines just
above it (the statement's own comment block), stating the bound's reason: the dtype's epsilon
times the operations accumulated, relative to the magnitude compared, or why the path is exact.
"""

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TOLERANCE = re.compile(
    r"\b(atol|rtol)\s*=|\ballclose\(|\bassert_close\(|\bapprox\(|[<>]=?\s*-?\d+(\.\d+)?e-\d+")
LOOKBACK = 6  # lines above the comparison that may hold its comment block


def uncommented_tolerances(path):
    lines = path.read_text().splitlines()
    missing = []
    for index, line in enumerate(lines):
        code = line.split("#", 1)[0]
        if not TOLERANCE.search(code) or code.lstrip().startswith(("def ", "import ", "from ")):
            continue
        window = lines[max(0, index - LOOKBACK): index + 1]
        # a comment in the window, or a docstring line just above that explains the bound
        if any("#" in w for w in window) or any('"""' in w for w in window[-3:]):
            continue
        missing.append(f"{path.relative_to(TESTS.parent)}:{index + 1}: {line.strip()}")
    return missing


def test_every_float_tolerance_is_explained():
    missing = []
    for path in sorted(TESTS.rglob("*.py")):
        if "__pycache__" in path.parts or path.name == Path(__file__).name:
            continue
        missing.extend(uncommented_tolerances(path))
    assert not missing, ("tolerances without a comment saying what they bound and why:\n"
                         + "\n".join(missing))


def test_the_check_sees_an_unexplained_tolerance(tmp_path):
    bad = TESTS / "_tolerance_probe_tmp.py"
    try:
        bad.write_text("x = 1\ny = 2\nz = 3\nw = 4\nv = 5\nu = 6\nt = 7\nassert abs(a - b) <= 1e-5\n")
        assert uncommented_tolerances(bad) == [f"tests/{bad.name}:8: assert abs(a - b) <= 1e-5"]
        bad.write_text("# float32: 10 ops x eps\nassert torch.allclose(a, b, atol=1e-6)\n")
        assert uncommented_tolerances(bad) == []
    finally:
        bad.unlink()
