"""benchmarks/suite.py's table: parsing, the goal check, a missing row, malformed input.

Canned tables only: nothing here times anything.
"""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SUITE_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("contextedit_bench_suite", SUITE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


CANNED = """# ContextEdit benchmark suite (quick, CPU)

2026-01-01 12:00 · x86_64, 2 cores

| benchmark | measure | best | median | goal | held/missed |
|---|---|---|---|---|---|
| attention mask SD1.5 | patched / unpatched | 1.031 | 1.062 | <= 1.05 | missed |
| DiT confinement FLUX.1 | patched / unpatched (same cond) | 1.120 | 1.040 | <= 1.10 | held |
| DiT confinement FLUX.1 | patched / stock prompt | 0.912 | 0.934 | - | - |
| region predictor | training samples/s | 211.4 | 180.2 | >= 200 | missed |
| check latency | check s (32 tokens) | 0.480 | 0.511 | - | - |
| SAM | masks from 3 boxes s/image | - | - | <= 0.5 | error |

Setup:
- attention mask SD1.5: tiny SD1.5 checkpoint
"""


def test_parse_reads_best_median_goal_and_status(suite):
    rows = suite.parse_table(CANNED)
    assert [r.key for r in rows] == [
        ("attention mask SD1.5", "patched / unpatched"),
        ("DiT confinement FLUX.1", "patched / unpatched (same cond)"),
        ("DiT confinement FLUX.1", "patched / stock prompt"),
        ("region predictor", "training samples/s"),
        ("check latency", "check s (32 tokens)"),
        ("SAM", "masks from 3 boxes s/image"),
    ]
    sd, dit, stock, train, _, sam = rows
    assert (sd.best, sd.median, sd.goal, sd.status) == (1.031, 1.062, "<= 1.05", "missed")
    assert (train.best, train.median) == (211.4, 180.2)
    assert stock.goal is None and stock.status == "-"
    assert sam.best is None and sam.median is None and sam.status == "error"
    assert dit.median == 1.04


def test_goals_are_decided_on_the_median(suite):
    rows = suite.parse_table(CANNED)
    report = suite.check_goals(rows)
    # SD: best 1.031 would hold, the median 1.062 does not; DiT: best 1.120 misses, median 1.040 holds
    assert ("attention mask SD1.5", "patched / unpatched") in report.missed
    assert ("DiT confinement FLUX.1", "patched / unpatched (same cond)") in report.held
    # '>=' goals: a throughput whose median is under the bound misses
    assert ("region predictor", "training samples/s") in report.missed
    # a goal row that did not produce figures counts as missed, informational rows are neither
    assert ("SAM", "masks from 3 boxes s/image") in report.missed
    assert ("DiT confinement FLUX.1", "patched / stock prompt") in report.informational
    assert report.disagree == [] and report.missing == []
    assert not report.ok
    assert "missed: attention mask SD1.5 / patched / unpatched" in report.summary()


def test_all_goals_held_is_ok(suite):
    rows = suite.parse_table(CANNED)
    kept = [r for r in rows if r.key[0] not in ("attention mask SD1.5", "region predictor", "SAM")]
    report = suite.check_goals(kept)
    assert report.ok and report.held == [("DiT confinement FLUX.1", "patched / unpatched (same cond)")]


def test_missing_row_is_reported(suite):
    rows = suite.parse_table(CANNED)
    expected = [r.key for r in rows] + [("MAG Edit", "fast / plain 50-step DDIM")]
    report = suite.check_goals(rows, expected)
    assert report.missing == [("MAG Edit", "fast / plain 50-step DDIM")]
    assert "missing row: MAG Edit / fast / plain 50-step DDIM" in report.summary()


def test_printed_status_that_contradicts_the_figures_is_flagged(suite):
    text = CANNED.replace("| 1.062 | <= 1.05 | missed |", "| 1.062 | <= 1.05 | held |")
    report = suite.check_goals(suite.parse_table(text))
    assert report.disagree == [("attention mask SD1.5", "patched / unpatched")]
    assert not report.ok


@pytest.mark.parametrize("mangle, message", [
    (lambda t: t.replace("| benchmark | measure |", "| bench | measure |"), "no suite table found"),
    (lambda t: t.replace("|---|---|---|---|---|---|", "| x | y | z | a | b | c |"), "separator row"),
    (lambda t: t.replace("| 0.912 | 0.934 | - | - |", "| 0.912 | - | - |"), r"line 9 .*expected 6 cells, got 5"),
    (lambda t: t.replace("| 1.031 |", "| fast |"), r"best 'fast' is not a number"),
    (lambda t: t.replace("<= 1.10", "under 1.10"), r"goal 'under 1.10' is not of the form"),
    (lambda t: t.replace("| <= 0.5 | error |", "| <= 0.5 | broken |"), r"held/missed 'broken' is not one of"),
    (lambda t: t.split("|---|")[0] + "|---|---|---|---|---|---|\n", "has no rows"),
    (lambda t: t.replace("| check latency | check s (32 tokens) |", "| SAM | masks from 3 boxes s/image |"),
     "rows repeated"),
])
def test_malformed_tables_are_rejected_with_the_reason(suite, mangle, message):
    with pytest.raises(ValueError, match=message):
        suite.parse_table(mangle(CANNED))


def test_ratio_rows_from_interleaved_runs(suite):
    # one slow patched run: the best ratio ignores it, the median ratio too (3 runs), so held
    row = suite.ratio_row("b", "patched / unpatched", [1.04, 1.50, 1.05], [1.00, 1.01, 1.02], "<= 1.05")
    assert row.best == pytest.approx(1.04) and row.median == pytest.approx(1.05 / 1.01)
    assert row.status == "held"
    slow = suite.ratio_row("b", "patched / unpatched", [1.10, 1.12, 1.09], [1.00, 1.02, 1.01], "<= 1.05")
    assert slow.status == "missed"
    rate = suite.value_row("b", "items/s", [0.5, 0.25, 1.0], per_second=True)
    assert (rate.best, rate.median) == (4.0, 2.0)


def test_written_table_round_trips_and_check_cli_exit_code(suite, tmp_path):
    rows = [suite.ratio_row("MAG Edit", "fast / plain 50-step DDIM", [1.8, 1.9], [1.0, 1.0], "<= 2.0"),
            suite.value_row("metrics pie", "samples/s", [0.1, 0.2], per_second=True)]
    ctx = SimpleNamespace(full=False, setup={"MAG Edit": "tiny"})
    stages = [suite.Stage("mag", 12.0, None, "ok")]
    suite.write_outputs(tmp_path / "t", "# header", rows, stages, ctx, {}, done=True)
    parsed = suite.parse_table((tmp_path / "t.md").read_text())
    assert [(r.key, r.best, r.median, r.goal, r.status) for r in parsed] == \
        [(r.key, round(r.best, 3), round(r.median, 3), r.goal, r.status) for r in rows]
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["rows"][0]["status"] == "held" and saved["finished"] is True
    assert suite.main(["--check", str(tmp_path / "t.md")]) == 0
    missed = (tmp_path / "t.md").read_text().replace("| 1.850 | <= 2.0 | held |", "| 2.150 | <= 2.0 | missed |")
    (tmp_path / "m.md").write_text(missed)
    assert suite.main(["--check", str(tmp_path / "m.md")]) == 1
