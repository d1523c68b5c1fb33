"""scripts/bench, the one report of every benchmark: CI runs the cheap ones in their fast flavour.

The runner starts each benchmark as its own process, reads its JSON, and must give one table in
which every figure stands beside a baseline (the ffmpeg command line, a naive client, a target or
the run's own start), with a verdict where there is a target; the same table as JSON and Markdown.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

CHEAP = ("mark", "upload")


def test_fast_run_of_the_cheap_benchmarks_gives_figures_with_baselines(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [
            str(REPO / "scripts" / "bench"),
            "--fast",
            "--only",
            ",".join(CHEAP),
            "--json",
            str(out),
            "--out",
            str(tmp_path / "each"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert doc["fast"] is True and set(doc["benches"]) == set(CHEAP)
    for name, b in doc["benches"].items():
        assert b["exit"] == 0 and not b["error"], (name, b)
        assert (tmp_path / "each" / f"{name}.json").exists()
    rows = doc["rows"]
    for prefix in ("mark latency", "upload"):
        mine = [r for r in rows if r["bench"].startswith(prefix)]
        assert len(mine) >= 2, (prefix, rows)
        for r in mine:
            assert isinstance(r["edged"], (int, float)) and isinstance(r["baseline"], (int, float)), r
            assert r["baseline_label"], r
    verdicts = [r for r in rows if r["target"]]
    assert verdicts and all(r["verdict"] in ("PASS", "FAIL") for r in verdicts)
    # One table on stdout and in Markdown beside the JSON, a line per figure.
    for r in rows:
        assert r["figure"] in p.stdout
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| ") == len(rows) + 1  # the header, then a row per figure


def test_an_unknown_benchmark_is_refused_with_the_known_ones():
    p = subprocess.run([str(REPO / "scripts" / "bench"), "--only", "nope"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "nope" in p.stderr and "record" in p.stderr and "soak" in p.stderr


def test_every_benchmark_script_starts():
    """The ones CI does not run in full must at least import and parse their arguments: a moved module
    (tests.sonoran_server once) otherwise breaks them unseen until the next full benchmark run."""
    scripts = sorted([*(REPO / "scripts").glob("bench_*.py"), REPO / "scripts" / "crash_matrix.py"])
    assert len(scripts) >= 8
    for script in scripts:
        p = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "usage" in p.stdout, f"{script.name}: {p.stderr[-2000:]}"
