"""``make compare-methods SMOKE=1`` end to end: experiments.compare_methods.compare on the synthetic digits
stand-in trains both ANNs, runs one convert_eval multirun job per registered method variant and writes a
table whose cells are the runs' own numbers."""
from __future__ import annotations

import time

import pytest

from experiments import compare_methods as cm
from msat.runs import load_run
from msat.stats import wilson_interval


def _first_table(md: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first markdown table of ``md`` (the measured comparison)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | ANN (seed) |"))
    cells = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert set(cells[1]) == {"---"}
    return cells[0], cells[2:]


def test_compare_methods_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    results, work, ckpt = tmp_path / "results", tmp_path / "work", tmp_path / "ckpt"
    t0 = time.perf_counter()
    out = cm.compare("digits", "digits_cnn", smoke=True, results_dir=results, work_dir=work, ckpt_dir=ckpt)
    seconds = time.perf_counter() - t0
    print(f"compare-methods smoke: {seconds:.1f} s")

    assert out == results / "methods.md" and out.is_file()
    assert (ckpt / "synthetic_digits_digits_cnn.pt").is_file() and (ckpt / "synthetic_digits_digits_cnn_qcfs.pt").is_file()
    png = (results / "methods.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000

    steps = cm.SMOKE_T_GRID
    jobs = cm.rows(steps[-1])
    assert {j.method for j in jobs} == set(cm.list_methods())            # every registered method has a row
    assert not any(dict(j.overrides).get("method.calib_T", 0) > steps[-1] for j in jobs)
    head, body = _first_table(out.read_text())
    assert head[:4] == ["method", "ANN (seed)", "needs retraining", "calibration cost"]
    assert head[4:4 + len(steps)] == [f"T={t}" for t in steps]
    assert len(body) == len(jobs)                                          # one row per variant

    runs_dir = work / "digits_digits_cnn" / "runs"
    for i, (job, row) in enumerate(zip(jobs, body)):
        run = load_run(runs_dir / f"compare_{job.key}")                   # verified against its manifest
        assert run["method"]["name"] == job.method and run["model_spec"]["act"] == job.ann, (i, job)
        for key, value in job.overrides:                                  # the row's overrides are what ran
            group, leaf = key.split(".", 1)
            assert run["config"][group][leaf] == value, (job, key)
        assert run["dataset"] == "synthetic_digits" and run["counts"]["total"] == 64
        assert len(run["acc"]) == steps[-1]
        assert row[0] == run["method"]["label"]
        assert row[2] == ("yes" if job.ann == "qcfs" else "no")
        assert row[1] == f"{cm.ann_cell(run)} ({run['train_run']['seed']})"
        for t, cell in zip(steps, row[4:4 + len(steps)]):
            acc, interval = cell.split(" ", 1)
            assert float(acc) == pytest.approx(100 * run["acc"][t - 1], abs=0.005 + 1e-9), (job, t, cell)
            lo, hi = wilson_interval(run["counts"]["correct"][t - 1], 64)
            assert interval == f"({100 * lo:.1f}-{100 * hi:.1f})", (job, t, cell)
        assert run["acc"] == [c / 64 for c in run["counts"]["correct"]]
    labels = [r[0] for r in body]
    # SNN Calibration's rows calibrated for T = 32 and 256 are left out at T = 16: only calib_T = 8 remains
    assert [lb for lb in labels if lb.startswith("SNN Calibration")] == [
        "SNN Calibration, light (calib. T=8)", "SNN Calibration, advanced (calib. T=8)"]
    assert "SRP (tau=4)" in labels and "QCFS" in labels

    # a table can never read another checkpoint's run: the relu rows checked against the QCFS checkpoint fail
    ctx = cm.context("digits", "digits_cnn", True, results, work, ckpt)
    runs, jobs = cm.load_comparison(ctx)
    swapped = [ckpt / "synthetic_digits_digits_cnn_qcfs.pt"] * len(jobs)
    with pytest.raises(RuntimeError, match="another checkpoint"):
        cm.check_runs(runs, jobs, swapped, ctx.runs_dir)
