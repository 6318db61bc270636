"""Reproduce targets: every aggregator on runs built from the real experiment configs (fast), the smoke
wrappers compose, one target end to end in smoke mode (fast), every target and the demo."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import reproduce as rpd

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
    """Metrics shaped like evaluate.run's, with a rising accuracy curve distinct per job ``k``."""
    T = cfg["T"]
    acc = [0.9 * (1 - math.exp(-(t + k) / 8)) for t in range(1, T + 1)]
    names = [f"features.{3 * i + 2}" for i in range(13)]
    layers = [{"name": n, "scale": 2.0, "firing_rate": 0.01 * (i + 1), "sin_ratio": 0.1, "q": 0.2, "ans": 1.5 + k,
               "p": 0.8 if cfg["sc"]["enabled"] and i == 12 else None} for i, n in enumerate(names)]
    return {"name": cfg["name"], "ann_acc": 0.9, "acc": acc, "steps_to_lossless": None, "layers": layers,
            "sin_curve": {n: [0.01 * t for t in range(T)] for n in names},
            "energy": {"op_ann": {"c1": 1_770_000, "c2": 10_000_000}, "op_snn": {"c1": 1_770_000, "c2": 2e7},
                       "fed_by": {"c1": None, "c2": ["features.2"]}, "ratio": 0.716, "mean_firing_rate": 0.02},
            "config": cfg, "timing": {"images": 10}}


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
                "fig2": ["0.617", "0.848"], "fig5": ["MSAT", "DTT", "DET", "0.2 Vth", "fixed"],
                "fig6": ["MSAT + SC", "MSAT"], "fig7": ["0.00585"], "demo": ["ANN - 0.5 pp"]}[target]
    for s in expected:
        assert s in md, (target, s)
    assert "n/a" not in md.split("\n")[0]
    if target in ("table4", "fig2", "fig5", "fig6", "fig7", "demo"):
        assert ctx.figure.read_bytes()[:8] == PNG
    # every job is reported: no measured cell is missing
    if target == "table7":
        assert md.count("w/ SC (filtered)") == 4 and md.count("w/o SC") == 4


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
            assert cfg.neuron == real.neuron and cfg.calib == real.calib and cfg.sc.enabled == real.sc.enabled


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
    assert (tmp_path / "ckpt" / "synthetic_cifar_vgg16.pt").is_file()
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
