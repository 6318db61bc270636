"""``make compare-methods SMOKE=1`` end to end: experiments.compare_methods.compare on the synthetic digits
stand-in trains both ANNs, runs one convert_eval multirun job per registered method variant and writes a
table whose cells are the runs' own numbers."""
from __future__ import annotations

import sys
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
    # SNN Calibration's rows calibrated for T = 32 and 256 are left out at T = 16: only calib_T = 8 remains, with
    # the shared calibration batch and with the official protocol on its 5 run seeds (digits_cnn has max pools)
    pools = "; LIPool on max pooling (the official code has average pooling only))"
    assert [lb for lb in labels if lb.startswith("SNN Calibration")] == [
        f"SNN Calibration, {p} (calib. T=8, {data}{pools}" for p in ("light", "advanced")
        for data in ["shared calibration batch"] + ["official protocol: 1 augmented training batch of 128, "   # 256 images
                                                    "corrections on a fresh one"] * 5]
    official = [load_run(runs_dir / f"compare_{j.key}") for j in jobs if ("method.protocol", "official") in j.overrides]
    assert sorted(r["config"]["seed"] for r in official) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for r in official:                          # the protocol's calibration data is what ran (and is recorded)
        calib = r["method"]["conversion"]["calib"]
        assert (calib["batches"], calib["batch_size"], calib["transform"], calib["shuffle"]) == (8, 128, "train", True)
        assert r["method"]["cost"]["calib_images"] == 256               # all the smoke split holds: 2 batches
    seeds_md = out.read_text().split("## Across seeds", 1)[1].split("##", 1)[0]
    rows_ = [line for line in seeds_md.splitlines() if line.startswith("| SNN Calibration")]
    assert len(rows_) == 2 and all("official protocol" in line and "| 0, 1, 2, 3, 4 |" in line for line in rows_)
    assert "SRP (tau=4)" in labels and "QCFS" in labels

    # a table can never read another checkpoint's run: the relu rows checked against the QCFS checkpoint fail
    ctx = cm.context("digits", "digits_cnn", True, results, work, ckpt)
    runs, jobs = cm.load_comparison(ctx)
    swapped = [ckpt / "synthetic_digits_digits_cnn_qcfs.pt"] * len(jobs)
    with pytest.raises(RuntimeError, match="another checkpoint"):
        cm.check_runs(runs, jobs, swapped, ctx.runs_dir)


def test_parallel_conversions_split_the_cores(tmp_path, monkeypatch):
    # --jobs N: Hydra's local launcher with N processes, each with its share of the cores as threads
    monkeypatch.setattr(cm.os, "cpu_count", lambda: 2)
    assert cm.parallel(1) == ([], None)
    assert cm.parallel(2) == (["hydra/launcher=local", "hydra.launcher.n_jobs=2"], {"OMP_NUM_THREADS": "1"})
    assert cm.parallel(4)[1] == {"OMP_NUM_THREADS": "1"}
    with pytest.raises(cm.UserError, match="--jobs must be at least 1, got 0"):
        cm.compare("digits", "digits_cnn", smoke=True, work_dir=tmp_path, n_jobs=0)
    assert not any(tmp_path.iterdir())                     # refused before anything was trained or written
    # the environment reaches the job (run_cmd)
    code = "import os, sys; sys.exit(0 if os.environ.get('OMP_NUM_THREADS') == '1' else 3)"
    cm.run_cmd([sys.executable, "-c", code, f"hydra.run.dir={tmp_path / 'job'}"], "env job", env={"OMP_NUM_THREADS": "1"})
    with pytest.raises(RuntimeError, match="exit code 3"):
        cm.run_cmd([sys.executable, "-c", code, f"hydra.run.dir={tmp_path / 'job2'}"], "env job", env={"OMP_NUM_THREADS": "2"})
