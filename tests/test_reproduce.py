"""Reproduce targets: every aggregator on runs built from the real experiment configs (fast), the smoke
wrappers compose, one target end to end in smoke mode (fast), every target and the demo."""
from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import reproduce as rpd
from msat.conversion import conversion_config
from msat.methods import get_method

CONF = str(Path(__file__).resolve().parents[1] / "conf")
PNG = b"\x89PNG\r\n\x1a\n"


def job_configs(target: str, *extra: str) -> list[dict]:
    """The resolved config of every job of a target's multirun, in Hydra's job order."""
    spec = rpd.TARGETS[target]
    sweeps = [[f"{s.split('=')[0]}={v}" for v in s.split("=", 1)[1].split(",")] for s in spec.sweep]
    out = []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for exp in spec.experiments:
            for combo in itertools.product(*sweeps):
                cfg = compose("convert_eval", overrides=[f"experiment={exp}", *combo, *extra])
                out.append(OmegaConf.to_container(cfg, resolve=True))
    return out


def fake_run(cfg: dict, k: int) -> dict:
    """Metrics shaped like evaluate.run's, every measured value distinct per job ``k`` (and per layer), so a
    table that reads the wrong run or the wrong layer shows the wrong number."""
    ccfg = conversion_config(cfg, T=cfg["T"])
    method = get_method(ccfg.method.name)(ccfg)
    T = cfg["T"]
    acc = [0.9 * (1 - math.exp(-(t + k) / 8)) for t in range(1, T + 1)]
    names = [f"features.{3 * i + 2}" for i in range(13)]
    layers = [{"name": n, "scale": 2.0, "firing_rate": 0.01 * (i + 1) + 0.0001 * k, "sin_ratio": 0.1, "q": 0.2,
               "ans": 1.5 + k + 0.01 * i, "p": 0.8 - 0.01 * k if ccfg.sc.enabled and i == 12 else None}
              for i, n in enumerate(names)]
    return {"name": cfg["name"], "dataset": cfg["dataset"]["name"], "model": cfg["model"]["name"],
            "method": {"name": method.name, "label": method.describe(), "dynamics": method.dynamics,
                       "conversion": dataclasses.asdict(ccfg)},
            "ann_acc": 0.9 + 0.001 * k, "acc": acc, "steps_to_lossless": 10 + k, "layers": layers,
            "sin_curve": {n: [0.01 * t + 0.001 * k + 0.0001 * i for t in range(T)] for i, n in enumerate(names)},
            "energy": {"op_ann": {"c1": 1_770_000, "c2": 10_000_000}, "op_snn": {"c1": 1_770_000, "c2": 2e7 + k},
                       "fed_by": {"c1": None, "c2": ["features.2"]}, "ratio": 0.5 + 0.01 * k,
                       "mean_firing_rate": 0.02 + 0.001 * k},
            "config": cfg, "timing": {"images": 10}}


def row(md: str, *keys: str) -> list[str]:
    """The cells of the one markdown table row whose cells include every key."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("|") and all(k in [c.strip() for c in line.strip().strip("|").split("|")] for k in keys)]
    assert len(rows) == 1, (keys, rows)
    return rows[0]


def pick(runs: list[dict], ds: str, model: str, method: str, units: str | None = None) -> dict:
    """The fake run of a job, selected from its config (independently of the aggregator's own lookup)."""
    hits = [r for r in runs if r["config"]["dataset"]["name"] == ds and r["config"]["model"]["name"] == model
            and r["config"]["method"]["name"] == method and units in (None, r["config"]["neuron"]["units"])]
    assert len(hits) == 1, (ds, model, method, units)
    return hits[0]


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def check_measured(target: str, md: str, runs: list[dict]) -> None:
    """Each measured cell of the target's table is the value of the run it claims to show."""
    L = {**rpd.MODEL_LABEL, **rpd.DATASET_LABEL}
    if target == "table3":
        for ds, m in itertools.product(("cifar10", "cifar100"), ("vgg16", "resnet20")):
            raw, norm = pick(runs, ds, m, "msat_sc", "raw"), pick(runs, ds, m, "msat_sc", "normalized")
            r = row(md, L[m], L[ds])
            assert r[2:8] == [pct(raw["ann_acc"]), pct(raw["acc"][-1]), pct(raw["ann_acc"] - raw["acc"][-1]),
                              str(raw["steps_to_lossless"]), pct(norm["acc"][-1]), str(norm["steps_to_lossless"])]
    elif target == "table4":
        for name, r in (("fixed threshold (measured)", pick(runs, "cifar10", "vgg16", "if_max")),
                        ("MSAT + SC, raw (measured)", pick(runs, "cifar10", "vgg16", "msat_sc", "raw")),
                        ("MSAT + SC, normalized (measured)", pick(runs, "cifar10", "vgg16", "msat_sc", "normalized"))):
            assert row(md, name)[1:] == [pct(r["acc"][t - 1]) for t in (16, 32, 64, 128, 256)]
    elif target == "table5":
        raw, norm = pick(runs, "imagenet", "resnet34", "msat_sc", "raw"), pick(runs, "imagenet", "resnet34", "msat_sc", "normalized")
        r = row(md, "ResNet34")
        assert (r[2], r[3], r[5], r[6]) == (pct(raw["ann_acc"]), pct(raw["acc"][-1]), str(raw["steps_to_lossless"]),
                                            pct(norm["acc"][-1]))
    elif target == "table6":
        for ds, m in (("imdb", "bilstm"), ("speech_commands", "m5")):
            for name, method, units in (("fixed", "if_max", None), ("MSAT + SC", "msat_sc", "raw"),
                                        ("MSAT + SC normalized", "msat_sc", "normalized")):
                run = pick(runs, ds, m, method, units)
                assert row(md, L[m], name)[3:7] == [pct(run["ann_acc"]), pct(run["acc"][-1]), str(len(run["acc"])),
                                                     str(run["steps_to_lossless"])]
    elif target == "table7":
        for ds, m in itertools.product(("cifar10", "cifar100"), ("vgg16", "resnet20")):
            for sc, method in (("w/o SC", "msat"), ("w/ SC (emitted)", "msat_sc"), ("w/ SC (filtered)", "msat_sc_filtered")):
                run = pick(runs, ds, m, method)
                last = run["layers"][-1]
                p = "n/a" if last["p"] is None else f"{last['p']:.3f}"
                assert row(md, L[m], L[ds], sc)[3:6] == [f"{last['ans']:.3f}", p, pct(run["acc"][31])]
    elif target == "table8":
        for name, method in (("Burst", "burst"), ("MSAT", "msat_sc")):
            run = pick(runs, "cifar100", "vgg16", method)
            r = row(md, name)
            assert (r[1], r[5], r[6]) == (f"{run['energy']['mean_firing_rate']:.5f}", f"{run['energy']['ratio']:.3f}",
                                          pct(run["acc"][-1]))
    elif target == "fig2":
        for m in ("vgg16", "resnet20"):
            run = pick(runs, "cifar100", m, "msat")
            section = md.split(f"### {L[m]} / CIFAR-100")[1].split("###")[0]
            for i, (n, curve) in enumerate(run["sin_curve"].items()):
                assert row(section, str(i + 1), n)[2] == f"{curve[15]:.3f}"
    elif target in ("fig5", "fig6"):
        methods = rpd.FIG5_METHODS if target == "fig5" else rpd.FIG6_METHODS
        for ds, m in itertools.product(("cifar10", "cifar100"), ("vgg16", "resnet20")):
            for method in methods:
                run = pick(runs, ds, m, method)
                T = len(run["acc"])
                assert row(md, L[m], L[ds], run["method"]["label"])[3:] == \
                    [pct(run["acc"][t - 1]) for t in rpd.table_steps(T)]
    elif target == "fig7":
        run = pick(runs, "cifar100", "vgg16", "msat_sc")
        assert f"{run['energy']['mean_firing_rate']:.4f}" in md
        for i, layer in enumerate(run["layers"]):
            assert row(md, str(i + 1), layer["name"])[2] == f"{layer['firing_rate']:.4f}"
    elif target == "demo":
        fixed, msat = pick(runs, "digits", "digits_cnn", "if_max"), pick(runs, "digits", "digits_cnn", "msat")
        for t in (1, 2, 4, 8, 16, 32, 64):
            assert row(md, str(t))[1:] == [pct(fixed["ann_acc"]), pct(fixed["acc"][t - 1]), pct(msat["acc"][t - 1])]


@pytest.mark.parametrize("target", list(rpd.TARGETS))
def test_every_aggregator_on_its_real_job_configs(target, tmp_path):
    spec = rpd.TARGETS[target]
    runs = [fake_run(c, k) for k, c in enumerate(job_configs(target))]
    cells = {e: rpd.experiment_cell(e) for e in spec.experiments}
    ctx = rpd.Context(target=target, runs=runs, cells=cells, smoke=False, figure=tmp_path / f"{target}.png")
    md = spec.aggregate(ctx)
    assert "| " in md and md.count("\n") > 3
    expected = {"table3": ["95.45", "112", "80.69", "252", "96.36"], "table4": ["93.87", "73.42", "71.10"],
                "table5": ["75.16", "74.93", "2045"], "table6": ["87.25", "86.83", "2048"],
                "table7": ["2.343", "66.73", "4.467"], "table8": ["0.716", "0.934", "1137.53M", "1.77M"],
                "fig2": ["0.617", "0.848"], "fig5": ["MSAT", "MSAT, DTT only", "MSAT, DET only", "IF, 0.2 Vth",
                                                     "IF, max norm"],
                "fig6": ["MSAT + SC", "MSAT"], "fig7": ["0.00585"], "demo": ["ANN - 0.5 pp"]}[target]
    for s in expected:
        assert s in md, (target, s)
    check_measured(target, md, runs)
    if target in ("table4", "fig2", "fig5", "fig6", "fig7", "demo"):
        assert ctx.figure.read_bytes()[:8] == PNG


def test_a_table_reading_the_wrong_run_fails_the_check(tmp_path):
    """The measured-column check is not vacuous: swapping the raw and normalized runs, or the last layer
    for the first, makes it fail."""
    runs = [fake_run(c, k) for k, c in enumerate(job_configs("table3"))]
    cells = {e: rpd.experiment_cell(e) for e in rpd.TARGETS["table3"].experiments}
    swapped = [dict(r, method={**r["method"], "conversion": {**r["method"]["conversion"], "neuron": {
        **r["method"]["conversion"]["neuron"], "units": {"raw": "normalized", "normalized": "raw"}[
            r["method"]["conversion"]["neuron"]["units"]]}}}) for r in runs]
    md = rpd.agg_table3(rpd.Context("table3", swapped, cells, False, tmp_path / "t3.png"))
    with pytest.raises(AssertionError):
        check_measured("table3", md, runs)
    runs7 = [fake_run(c, k) for k, c in enumerate(job_configs("table7"))]
    flipped = [dict(r, layers=r["layers"][::-1]) for r in runs7]
    cells7 = {e: rpd.experiment_cell(e) for e in rpd.TARGETS["table7"].experiments}
    md7 = rpd.agg_table7(rpd.Context("table7", flipped, cells7, False, tmp_path / "t7.png"))
    with pytest.raises(AssertionError):
        check_measured("table7", md7, runs7)


def test_smoke_wrappers_compose(tmp_path):
    """Every experiment file, wrapped for smoke mode: synthetic data of the same shape, T=8, SC E <= T."""
    (tmp_path / "smoke").mkdir()
    exps = sorted({e for t in rpd.TARGETS.values() for e in t.experiments})
    cells = {e: rpd.experiment_cell(e) for e in exps}
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for e, (ds, model) in cells.items():
            (tmp_path / "smoke" / f"{e}.yaml").write_text(rpd.smoke_wrapper(e, ds))
            cfg = compose("convert_eval", overrides=[f"+smoke={e}", f"hydra.searchpath=[file://{tmp_path}]"])
            real = compose("convert_eval", overrides=[f"experiment={e}"])
            assert cfg.dataset.name == rpd.SMOKE_DATASETS[ds] and cfg.model.name == model
            assert cfg.T == rpd.SMOKE_T and cfg.sc.E <= cfg.T and cfg.name == e
            assert cfg.neuron == real.neuron and cfg.calib == real.calib and cfg.method == real.method


def test_unknown_target():
    with pytest.raises(rpd.UserError, match="valid targets: demo, table3"):
        rpd.reproduce("table9", smoke=True)


def _smoke(target: str, root: Path) -> str:
    out = rpd.reproduce(target, smoke=True, results_dir=root / "results", work_dir=root / "work",
                        ckpt_dir=root / "ckpt")
    assert out == root / "results" / f"{target}.md"
    return out.read_text()


def test_smoke_fig7_end_to_end(tmp_path):
    """Train a VGG16 on synthetic CIFAR (1 epoch), convert, aggregate: the md and the figure appear."""
    md = _smoke("fig7", tmp_path)
    assert "Smoke run" in md and "firing rate" in md and (tmp_path / "results" / "fig7.png").read_bytes()[:8] == PNG
    assert (tmp_path / "ckpt" / "synthetic_cifar100_vgg16.pt").is_file()     # the CIFAR-100 stand-in
    runs = list((tmp_path / "work" / "fig7" / "runs").glob("*/metrics.json"))
    assert len(runs) == 1
    again = _smoke("fig7", tmp_path)                 # checkpoint and finished run are reused
    assert again == md


def test_every_target_in_smoke_mode(tmp_path):
    """All targets (so every experiment file) in smoke mode, sharing one checkpoint directory."""
    for target in rpd.TARGETS:
        if target == "demo":
            continue
        md = _smoke(target, tmp_path)
        assert "Smoke run" in md and "| " in md, target


def test_demo(tmp_path):
    out = rpd.reproduce("demo", results_dir=tmp_path / "results", work_dir=tmp_path / "work",
                        ckpt_dir=tmp_path / "ckpt")
    md = out.read_text()
    assert "Steps to the ANN accuracy minus 0.5 pp" in md
    assert (tmp_path / "results" / "demo.png").read_bytes()[:8] == PNG
