"""The benchmark's bookkeeping (its figures are measured by `make bench`, never asserted in tests)."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_rerun_keeps_the_figures_it_replaces():
    """results.json lost each section's earlier figures at every rerun (they were kept by hand, when at all)."""
    bench = _bench()
    first = {"wall_s": 40.0, "measured_at": "day 1"}
    assert bench.with_history(first, None) == first
    second = bench.with_history({"wall_s": 38.0, "measured_at": "day 2"}, first)
    assert second == {"wall_s": 38.0, "measured_at": "day 2", "previous": [first]}
    third = bench.with_history({"wall_s": 37.0, "measured_at": "day 3"}, second)
    assert [p["measured_at"] for p in third["previous"]] == ["day 2", "day 1"]
    assert all("previous" not in p for p in third["previous"])  # flat: no history nested in history
    many = third
    for day in range(4, 20):
        many = bench.with_history({"wall_s": 30.0, "measured_at": f"day {day}"}, many)
    assert len(many["previous"]) == bench.HISTORY and many["previous"][0]["measured_at"] == "day 18"


def test_cpu_seconds_count_the_work_of_children():
    """The flow's bookkeeping runs partly in other processes (the DVC helper, the Prefect server): the
    overhead's CPU figures must see it."""
    import subprocess

    bench = _bench()
    before = bench.cpu_seconds()
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)
    assert bench.cpu_seconds() - before >= 0.4
