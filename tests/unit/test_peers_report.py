"""The peers benchmark's pure parts: statistics, ratios to cbctl, the table and JSON line, the chart, the
command line, and skipping a peer that is not installed. Needs neither Ray, Dask nor matplotlib."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import pytest
from rich.console import Console

from benchmarks.peers import driver, report
from benchmarks.peers.report import Samples
from benchmarks.peers.workloads import WORKLOADS


def samples_ms(*values_ms: float, elapsed_s: float | None = 1.0) -> Samples:
    return Samples([v / 1e3 for v in values_ms], elapsed_s)


def test_statistics_are_median_nearest_rank_p99_and_calls_per_second():
    stats = report.statistics_of(samples_ms(*range(1, 101), elapsed_s=2.0))
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["p99_ms"] == pytest.approx(99.0)
    assert stats["calls_per_s"] == pytest.approx(50.0)


def test_cold_start_has_no_calls_per_second_and_blocks_accumulate():
    cold = Samples(elapsed_s=None)
    cold.add_block([3.0], None)
    cold.add_block([5.0], None)
    stats = report.statistics_of(cold)
    assert stats["calls_per_s"] is None
    assert stats["median_ms"] == pytest.approx(4000.0)

    calls = Samples()
    calls.add_block([0.001] * 10, 0.5)
    calls.add_block([0.001] * 10, 0.5)
    assert report.statistics_of(calls)["calls_per_s"] == pytest.approx(20.0)


def test_statistics_of_nothing_is_refused():
    with pytest.raises(ValueError, match="no samples"):
        report.statistics_of(Samples())


def test_ratio_is_time_over_cbctls_and_throughput_is_inverted():
    cbctl = {"median_ms": 0.5, "calls_per_s": 4000.0}
    slower = {"median_ms": 5.0, "calls_per_s": 500.0}
    assert report.ratio_to_cbctl("chain", slower, cbctl) == pytest.approx(10.0)
    assert report.ratio_to_cbctl("in_flight", slower, cbctl) == pytest.approx(8.0)
    assert report.ratio_to_cbctl("chain", slower, None) is None
    assert report.ratio_to_cbctl("in_flight", {"median_ms": 1.0, "calls_per_s": None}, cbctl) is None


def test_rows_follow_workload_order_and_carry_ratios():
    measured = {
        "cbctl": {w: samples_ms(1.0, 1.0, 1.0) for w in WORKLOADS},
        "ray": {"chain": samples_ms(3.0, 3.0, 3.0), "noop": samples_ms(2.0, 2.0, 2.0)},
    }
    rows = report.build_rows(measured, ["cbctl", "ray"])
    assert [(r["workload"], r["system"]) for r in rows][:4] == [
        ("noop", "cbctl"), ("noop", "ray"), ("chain", "cbctl"), ("chain", "ray")]
    assert len(rows) == len(WORKLOADS) + 2
    by_key = {(r["workload"], r["system"]): r for r in rows}
    assert by_key[("noop", "ray")]["x_cbctl"] == pytest.approx(2.0)
    assert by_key[("chain", "ray")]["x_cbctl"] == pytest.approx(3.0)
    assert by_key[("fan", "cbctl")]["x_cbctl"] == pytest.approx(1.0)
    assert set(rows[0]) == set(report.COLUMNS)


def test_rows_without_cbctl_have_no_ratio():
    rows = report.build_rows({"dask": {"noop": samples_ms(10.0)}}, ["dask"])
    assert rows == [{"workload": "noop", "system": "dask", "median_ms": 10.0, "p99_ms": 10.0,
                     "calls_per_s": 1.0, "x_cbctl": None}]


def test_cells_show_three_significant_figures():
    assert report.format_cell(0.33641) == "0.336"
    assert report.format_cell(7.114) == "7.11"
    assert report.format_cell(4670.2) == "4,670"
    assert report.format_cell(None) == ""
    assert report.format_cell("ray") == "ray"


def test_report_prints_notes_then_table_then_one_json_line(capsys):
    rows = report.build_rows({"cbctl": {"noop": samples_ms(0.3, 0.4)}}, ["cbctl"])
    report.print_report(rows, ["ray skipped: not installed"], {"calls": 2},
                        console=Console(file=sys.stdout, width=120))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "note: ray skipped: not installed"
    assert any("noop" in line and "0.35" in line for line in lines[1:-1])
    parsed = json.loads(lines[-1])
    assert parsed["benchmark"] == report.TITLE
    assert parsed["rows"] == rows
    assert parsed["notes"] == ["ray skipped: not installed"]
    assert parsed["calls"] == 2


def test_a_peer_that_is_not_installed_is_skipped_with_a_note():
    present, notes = driver.available(["cbctl", "ray", "dask"],
                                      find_spec=lambda package: None if package == "ray" else object())
    assert present == ["cbctl", "dask"]
    assert len(notes) == 1
    assert notes[0].startswith("ray skipped: ray is not installed")
    assert ".[bench]" in notes[0]


def test_only_missing_peers_prints_notes_and_exits_cleanly(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("ray", "distributed") else real(name, *a))
    driver.main(["--only", "ray,dask", "--calls", "10"])  # returns: no error for missing peers
    out = capsys.readouterr().out.strip().splitlines()
    parsed = json.loads(out[-1])
    assert parsed["rows"] == []
    assert [n.split(":")[0] for n in parsed["notes"]] == ["ray skipped", "dask skipped", "cbctl did not run"]


def test_only_accepts_known_systems_once():
    assert driver.parse_only("dask, cbctl") == ["dask", "cbctl"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown system spark"):
        driver.parse_only("cbctl,spark")
    with pytest.raises(argparse.ArgumentTypeError, match="named twice"):
        driver.parse_only("ray,ray")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown system"):
        driver.parse_only(",")


def test_bad_counts_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exited:
        driver.parse_args(["--calls", "2", "--rounds", "3"])
    assert exited.value.code == 2
    assert "--calls >= --rounds" in capsys.readouterr().err


def test_calls_are_split_over_rounds_and_systems_rotate():
    assert driver.split_calls(10, 3) == [4, 3, 3]
    assert sum(driver.split_calls(400, 3)) == 400
    assert [driver.rotated(["cbctl", "ray", "dask"], r) for r in range(4)] == [
        ["cbctl", "ray", "dask"], ["ray", "dask", "cbctl"], ["dask", "cbctl", "ray"], ["cbctl", "ray", "dask"]]


def test_plot_without_matplotlib_is_a_one_line_error_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(report.PlotUnavailable, match="pip install"):
        report.require_matplotlib()
    with pytest.raises(SystemExit) as exited:
        driver.main(["--only", "cbctl", "--plot", str(tmp_path / "chart.png")])
    message = str(exited.value.code)
    assert message.startswith("error: --plot needs matplotlib") and "\n" not in message
    assert not (tmp_path / "chart.png").exists()


def test_plot_into_a_missing_directory_is_refused_before_anything_runs(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit) as exited:
        driver.main(["--only", "cbctl", "--plot", str(tmp_path / "no" / "chart.png")])
    assert str(exited.value.code).startswith("error: cannot write the chart")


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    measured = {system: {w: samples_ms(scale, 2 * scale) for w in WORKLOADS}
                for system, scale in (("cbctl", 0.3), ("ray", 3.0), ("dask", 12.0))}
    path = tmp_path / "chart.png"
    report.plot(report.build_rows(measured, ["cbctl", "ray", "dask"]), str(path), subtitle="test machine")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
