"""Reproduce the paper's tables and figures: ``python -m experiments.reproduce TARGET [--smoke]``.

Each target (``table3`` ... ``table8``, ``fig2``, ``fig5``, ``fig6``, ``fig7``)

1. trains the checkpoints its experiments need when they are absent (``train_ann.py``, one
   Hydra multirun per dataset; ``--ckpt-dir`` / ``CKPT_DIR`` point at existing ones),
2. runs its conversions as one Hydra multirun of ``convert_eval.py`` over its experiment files
   (``conf/experiment/<target>_*.yaml``, plus a sweep such as ``method=msat,msat_sc,msat_sc_filtered``),
3. aggregates the runs' ``metrics.json`` into ``results/<target>.md`` (measured columns beside
   the paper's and the authors' from ``../shared/reference``) and a figure where the paper has one.

``--smoke`` runs the identical pipeline on the synthetic stand-ins of the same input shape
(1 training epoch of 2 batches, T = 8, tiny splits) and writes to ``outputs/smoke/`` (never to
``results/``): generated wrappers ``outputs/smoke/reproduce/<target>/conf/smoke/<exp>.yaml``
include each experiment file and override only the dataset and sizes.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from msat import reporting as rp
from msat.hydra_schema import register
from msat.runs import load_run
from msat.utils import UserError, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
register()                                        # the schemas and method nodes composing conf/ needs
SMOKE_T = 8
SMOKE_E = 4                                       # SC steps in smoke runs (E <= T)
SMOKE_DATASETS = {"cifar10": "synthetic_cifar", "cifar100": "synthetic_cifar100", "imagenet": "synthetic_imagenet",
                  "imdb": "synthetic_imdb", "speech_commands": "synthetic_speech", "digits": "digits"}
SMOKE_SIZES = {"synthetic_cifar": (32, 8), "synthetic_cifar100": (32, 8), "synthetic_imagenet": (8, 4), "synthetic_imdb": (64, 16),
               "synthetic_speech": (36, 8), "digits": None}
PAPER_T = (16, 32, 64, 128, 256)
DATASET_LABEL = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet", "imdb": "IMDB",
                 "speech_commands": "Speech Commands"}
MODEL_LABEL = {"vgg16": "VGG16", "resnet20": "ResNet20", "resnet34": "ResNet34", "bilstm": "BiLSTM", "m5": "M5"}


@dataclass
class Context:
    """What an aggregator sees: the runs' metrics, the target's (paper dataset, model) cells, the figure path.

    Runs are identified by what they ran (paper dataset, model, method, units), read from their
    ``metrics.json``, never by experiment or directory names.
    """

    target: str
    runs: list[dict]
    cells: dict[str, tuple[str, str]]        # experiment name -> (paper dataset, model)
    smoke: bool
    figure: Path

    def find(self, dataset: str, model: str, method: str, units: str | None = None) -> dict | None:
        """The one run of ``method`` on (paper ``dataset``, ``model``), optionally in ``units``; None if absent."""
        hits = [r for r in self.runs if paper_dataset(r) == dataset and r["model"] == model
                and r["method"]["name"] == method
                and (units is None or r["method"]["conversion"]["neuron"]["units"] == units)]
        if len(hits) > 1:
            raise RuntimeError(f"{self.target}: {len(hits)} runs of {method} on {dataset}/{model} "
                               f"(units {units}); expected one")
        return hits[0] if hits else None

    def pairs(self) -> list[tuple[str, str]]:
        """The distinct (paper dataset, model) cells, in the target's order."""
        return list(dict.fromkeys(self.cells.values()))


SMOKE_PAPER = {v: k for k, v in SMOKE_DATASETS.items() if k != "digits"}


def paper_dataset(run: Mapping) -> str:
    """The paper dataset a run stands for (a smoke run's synthetic stand-in maps back to it)."""
    return SMOKE_PAPER.get(run["dataset"], run["dataset"])


def acc_at(run: dict | None, t: int) -> float | None:
    """Accuracy (fraction) after t steps, None if the run is missing or shorter."""
    return run["acc"][t - 1] if run is not None and t <= len(run["acc"]) else None


def table_steps(T: int) -> list[int]:
    """The paper's T columns up to the simulated T (smoke: the default report steps)."""
    steps = [t for t in PAPER_T if t <= T]
    return steps or [t for t in (1, 4, 8, 16) if t <= T]


def label(run: Mapping) -> str:
    """A run's method as tables and plots name it (``Method.describe``)."""
    return run["method"]["label"]


def neuron_of(run: Mapping) -> Mapping:
    return run["method"]["conversion"]["neuron"]


def authors_run(run: Mapping) -> str:
    """The authors' run name matching what ``run`` ran (their published curves)."""
    m = run["method"]
    return rp.authors_run_name(m["dynamics"], m["conversion"]["neuron"], m["conversion"]["sc"])


def _paper_num(row: dict | None, key: str) -> str:
    return rp.NA if row is None or row.get(key) in (None, "") else row[key]


def _authors_steps(curve: dict[int, float] | None, target_acc: float | None) -> str:
    """The authors' first T on their grid with acc >= ``target_acc`` (%)."""
    if curve is None or target_acc is None:
        return rp.NA
    hit = [t for t in sorted(curve) if curve[t] >= target_acc]
    return str(hit[0]) if hit else f">{max(curve)}"


def _label(ds: str, m: str) -> tuple[str, str]:
    return MODEL_LABEL.get(m, m), DATASET_LABEL.get(ds, ds)


def _loss(run: dict | None) -> float | None:
    return None if run is None else run["ann_acc"] - run["acc"][-1]


def _steps(run: dict | None) -> Any:
    return None if run is None else run["steps_to_lossless"]


# ----------------------------------------------------------------------------- aggregators

def agg_table3(ctx: Context) -> str:
    """VGG16 / ResNet20 x CIFAR-10/100, MSAT + SC: ANN, SNN, loss, steps to lossless, beside paper and authors."""
    rows, T = [], None
    for ds, m in ctx.pairs():
        raw, norm = ctx.find(ds, m, "msat_sc", "raw"), ctx.find(ds, m, "msat_sc", "normalized")
        T = len(raw["acc"]) if raw else T
        paper = rp.paper_row(3, "MSAT", ds, m)
        curve = rp.authors_curve(ds, m, authors_run(raw)) if raw else None
        paper_ann = float(paper["ann_acc"]) if paper else None
        rows.append([*_label(ds, m), rp.pct(raw and raw["ann_acc"]), rp.pct(acc_at(raw, T)), rp.pct(_loss(raw)),
                     _steps(raw), rp.pct(acc_at(norm, T)), _steps(norm),
                     _paper_num(paper, "ann_acc"), _paper_num(paper, "snn_acc"), _paper_num(paper, "loss"),
                     _paper_num(paper, "steps"),
                     rp.fmt(curve.get(256)) if curve else rp.NA, _authors_steps(curve, paper_ann)])
    head = ["Model", "Dataset", "ANN (%)", f"SNN T={T} (%)", "loss (pp)", "steps to lossless",
            f"SNN normalized T={T} (%)", "steps normalized", "paper ANN", "paper SNN", "paper loss",
            "paper steps", "authors SNN T=256", "authors steps >= paper ANN"]
    return ("MSAT + SC, authors' units (`neuron.units=raw`) and calibration; `normalized` columns: the same "
            "run in normalized units (SPEC section 2). Steps to lossless: first t with SNN acc >= ANN acc.\n\n"
            + rp.markdown_table(head, rows))


def agg_table4(ctx: Context) -> str:
    """VGG16 CIFAR-10: fixed threshold vs MSAT at T = 16..256, beside the paper's rows and the authors' curves."""
    fixed = ctx.find("cifar10", "vgg16", "if_max")
    msat, norm = ctx.find("cifar10", "vgg16", "msat_sc", "raw"), ctx.find("cifar10", "vgg16", "msat_sc", "normalized")
    T = max(len(r["acc"]) for r in (fixed, msat, norm) if r)
    steps = table_steps(T)
    rows = [[name, *[rp.pct(acc_at(r, t)) for t in steps]] for name, r in
            (("fixed threshold (measured)", fixed), ("MSAT + SC, raw (measured)", msat),
             ("MSAT + SC, normalized (measured)", norm))]
    for method in ("Calibration", "DTIF", "MSAT"):
        note = rp.parse_note((rp.paper_row(4, method, "cifar10", "vgg16") or {}).get("note"))
        rows.append([f"{method} (paper)", *[note.get(f"T{t}", rp.NA) for t in steps]])
    for name, r in (("fixed", fixed), ("MSAT + SC", msat)):
        curve = rp.authors_curve("cifar10", "vgg16", authors_run(r)) if r else None
        rows.append([f"{name} (authors)", *[rp.fmt(curve.get(t)) if curve else rp.NA for t in steps]])
    series = {f"{label(r)} ({neuron_of(r)['units']})": [100 * a for a in r["acc"]] for r in (fixed, msat, norm) if r}
    rp.plot_curves(series, ctx.figure, title="VGG16 CIFAR-10: accuracy vs T",
                   hlines={"ANN": 100 * msat["ann_acc"]} if msat else None)
    return ("CIFAR-10 / VGG16, accuracy (%) at T.\n\n"
            + rp.markdown_table(["Method", *[f"T={t}" for t in steps]], rows)
            + f"\n![accuracy vs T]({ctx.figure.name})\n")


def agg_table5(ctx: Context) -> str:
    """ResNet34 ImageNet, MSAT + SC."""
    raw, norm = ctx.find("imagenet", "resnet34", "msat_sc", "raw"), ctx.find("imagenet", "resnet34", "msat_sc", "normalized")
    paper = rp.paper_row(5, "MSAT", "imagenet", "resnet34")
    T = len(raw["acc"]) if raw else len(norm["acc"]) if norm else 0
    rows = [["ResNet34", "ImageNet", rp.pct(raw and raw["ann_acc"]), rp.pct(acc_at(raw, T)), rp.pct(_loss(raw)),
             _steps(raw), rp.pct(acc_at(norm, T)), _paper_num(paper, "ann_acc"), _paper_num(paper, "snn_acc"),
             _paper_num(paper, "loss"), _paper_num(paper, "steps")]]
    head = ["Model", "Dataset", "ANN (%)", f"SNN T={T} (%)", "loss (pp)", "steps to lossless",
            f"SNN normalized T={T} (%)", "paper ANN", "paper SNN", "paper loss", "paper steps"]
    return ("MSAT + SC, ResNet34 hyper-parameters (alpha 1.0, tau 0.5/0.5). The authors published no MSAT "
            "ImageNet curve (their ImageNet runs are burst-spike baselines): no authors' column.\n\n"
            + rp.markdown_table(head, rows))


def agg_table6(ctx: Context) -> str:
    """IMDB BiLSTM and Speech Commands M5: fixed threshold (the paper's RMP-SNN row) vs MSAT + SC."""
    rows = []
    for ds, m in ctx.pairs():
        for name, method, units, paper_method in (("fixed", "if_max", None, "RMP-SNN"),
                                                  ("MSAT + SC", "msat_sc", "raw", "MSAT"),
                                                  ("MSAT + SC normalized", "msat_sc", "normalized", "MSAT")):
            r = ctx.find(ds, m, method, units)
            paper = rp.paper_row(6, paper_method, ds, m)
            T = len(r["acc"]) if r else 0
            rows.append([*_label(ds, m), name, rp.pct(r and r["ann_acc"]), rp.pct(acc_at(r, T)), T or rp.NA,
                         _steps(r), _paper_num(paper, "ann_acc"), _paper_num(paper, "snn_acc"),
                         _paper_num(paper, "steps")])
    head = ["Model", "Dataset", "Method", "ANN (%)", "SNN (%)", "T", "steps to lossless", "paper ANN",
            "paper SNN", "paper steps"]
    return ("The paper's RMP-SNN rows are the fixed threshold with soft reset. The BiLSTM encoder stays analog; "
            "only its ReLU head spikes (SPEC 1.6). MSAT uses the VGG16 hyper-parameters (none published "
            "for these models).\n\n" + rp.markdown_table(head, rows))


def agg_table7(ctx: Context) -> str:
    """SC ablation: ANS of the last spiking layer at t = E and accuracy at T = 32, without and with SC."""
    rows = []
    for ds, m in ctx.pairs():
        for sc_label, method, paper_method in (("w/o SC", "msat", "MSAT w/o SC"),
                                               ("w/ SC (emitted)", "msat_sc", "MSAT w/ SC"),
                                               ("w/ SC (filtered)", "msat_sc_filtered", None)):
            r = ctx.find(ds, m, method)
            T = min(32, len(r["acc"])) if r else 32
            paper = rp.paper_row(7, paper_method, ds, m) if paper_method else None
            run = rp.authors_run_name("msat", {}, {"enabled": method != "msat"})
            ans = rp.authors_layer_stat(ds, m, run, "avg_error_spikenum")
            curve = rp.authors_curve(ds, m, run)
            rows.append([*_label(ds, m), sc_label, rp.fmt(r and r["layers"][-1]["ans"], 3),
                         rp.fmt(r and r["layers"][-1]["p"], 3), rp.pct(acc_at(r, T)), T,
                         rp.parse_note(paper["note"]).get("ANS", rp.NA) if paper else rp.NA,
                         _paper_num(paper, "snn_acc"), rp.fmt(ans[max(ans)], 3) if ans else rp.NA,
                         rp.fmt(curve.get(32)) if curve else rp.NA])
    head = ["Model", "Dataset", "SC", "ANS (last layer, t=E)", "p (SC)", "acc (%)", "T", "paper ANS",
            "paper acc T=32", "authors ANS", "authors acc T=32"]
    return ("ANS: spikes per SIN neuron of the last spiking layer at t = E (16; smoke: 4). `emitted`: a dropped "
            "spike's charge is lost (authors' code); `filtered`: it keeps its charge (paper Eq. 20).\n\n"
            + rp.markdown_table(head, rows))


def _energy_split(e: Mapping) -> tuple[float, float, float]:
    """(OP of analog-fed layers, OP_ANN of spike-fed layers, OP_SNN of spike-fed layers), in M."""
    first = sum(v for n, v in e["op_ann"].items() if e["fed_by"][n] is None)
    rest_ann = sum(v for n, v in e["op_ann"].items() if e["fed_by"][n] is not None)
    rest_snn = sum(v for n, v in e["op_snn"].items() if e["fed_by"][n] is not None)
    return first / 1e6, rest_ann / 1e6, rest_snn / 1e6


def agg_table8(ctx: Context) -> str:
    """Energy, VGG16 CIFAR-100, T = 64: burst spikes vs MSAT + SC."""
    rows = []
    for method, paper_method in (("burst", "Burst"), ("msat_sc", "MSAT")):
        r = ctx.find("cifar100", "vgg16", method)
        note = rp.parse_note((rp.paper_row(8, paper_method, "cifar100", "vgg16") or {}).get("note"))
        if r:
            e = r["energy"]
            op1, ann_rest, snn_rest = _energy_split(e)
            measured = [rp.fmt(e["mean_firing_rate"], 5), f"{op1:.2f}M", f"{ann_rest:.2f}M", f"{snn_rest:.2f}M",
                        rp.fmt(e["ratio"], 3), rp.pct(r["acc"][-1])]
        else:
            measured = [rp.NA] * 6
        rows.append([paper_method, *measured, note.get("mean_firing_rate", rp.NA), note.get("OP1", rp.NA),
                     note.get("OPann_rest", rp.NA), note.get("OPsnn_rest", rp.NA), note.get("energy_ratio", rp.NA)])
    head = ["Method", "mean firing rate", "OP_1", "OP_ANN l>=2", "OP_SNN l>=2", "energy ratio", "acc (%)",
            "paper rate", "paper OP_1", "paper OP_ANN l>=2", "paper OP_SNN l>=2", "paper ratio"]
    return ("Eq. 21-23 with E_MAC = 4.6 pJ, E_AC = 0.9 pJ; OP per sample, summed over T = 64 steps "
            "(smoke: T = 8).\n\n" + rp.markdown_table(head, rows))


def agg_fig2(ctx: Context) -> str:
    """SIN ratio per layer over t (CIFAR-100, VGG16 and ResNet20), authors' SINRate at t = 16 beside."""
    panels, parts = [], []
    for ds, m in ctx.pairs():
        r = ctx.find(ds, m, "msat")
        if r is None:
            parts.append(f"{ds} / {m}: run missing\n")
            continue
        panels.append({"series": r["sin_curve"], "ylabel": "SIN ratio", "title": f"{_label(ds, m)[0]} {ds}"})
        ref = rp.authors_layer_stat(ds, m, authors_run(r), "SINRate")
        T = len(r["acc"])
        ts = [t for t in (16, 32, T) if t <= T]
        rows = [[i + 1, n, *[rp.fmt(r["sin_curve"][n][t - 1], 3) for t in ts],
                 rp.fmt(ref.get(i + 1), 3) if ref else rp.NA] for i, n in enumerate(r["sin_curve"])]
        parts.append(f"### {' / '.join(_label(ds, m))}\n\n"
                     + rp.markdown_table(["#", "layer", *[f"t={t}" for t in ts], "authors SINRate t=16"], rows))
    if panels:
        rp.plot_panels(panels, ctx.figure)
    return ("SIN ratio = |spiking neurons whose ANN pre-activation is <= 0| / |ANN pre-activation <= 0|.\n\n"
            + "\n".join(parts) + f"\n![SIN ratio]({ctx.figure.name})\n")


def _fig_curves(ctx: Context, methods: Sequence[str], title: str, shade: bool = False) -> str:
    """Accuracy-curve panels (one per cell) and a table of accuracy at the paper's T, for ``methods``."""
    panels, rows = [], []
    for ds, m in ctx.pairs():
        runs = [r for r in (ctx.find(ds, m, meth) for meth in methods) if r]
        if not runs:
            continue
        T = len(runs[0]["acc"])
        steps = table_steps(T)
        refs = {}
        for r in runs:
            rows.append([*_label(ds, m), label(r), *[rp.pct(acc_at(r, t)) for t in steps]])
            curve = rp.authors_curve(ds, m, authors_run(r))
            if curve:
                refs[f"{label(r)} (authors)"] = {t: v for t, v in curve.items() if t <= max(T, 256)}
                rows.append([*_label(ds, m), f"{label(r)} (authors)", *[rp.fmt(curve.get(t)) for t in steps]])
        sc_e = runs[0]["method"]["conversion"]["sc"]["E"] if shade else None
        panels.append({"series": {label(r): [100 * a for a in r["acc"]] for r in runs},
                       "hlines": {"ANN": 100 * runs[0]["ann_acc"]}, "refs": refs if not ctx.smoke else None,
                       "title": f"{' / '.join(_label(ds, m))}", "shade_before": sc_e})
    if panels:
        rp.plot_panels(panels, ctx.figure)
    steps = table_steps(max((len(r["acc"]) for r in ctx.runs), default=SMOKE_T))
    return (title + "\n\n" + rp.markdown_table(["Model", "Dataset", "Method", *[f"T={t}" for t in steps]], rows)
            + f"\n![accuracy curves]({ctx.figure.name})\n")


FIG5_METHODS = ("if_max", "vth_scaled", "msat_dtt", "msat_det", "msat")
FIG6_METHODS = ("msat", "msat_sc")
TABLE7_METHODS = ("msat", "msat_sc", "msat_sc_filtered")


def agg_fig5(ctx: Context) -> str:
    """Fixed, 0.2 Vth, DTT, DET and MSAT accuracy curves."""
    return _fig_curves(ctx, FIG5_METHODS, "Accuracy (%) after T steps without SC; dashed: the authors' curves.")


def agg_fig6(ctx: Context) -> str:
    """MSAT with and without spike confidence; the green band marks the SC steps."""
    return _fig_curves(ctx, FIG6_METHODS, "MSAT accuracy (%) without and with SC (green band: t < E).", shade=True)


def agg_fig7(ctx: Context) -> str:
    """Firing rate per layer, VGG16 CIFAR-100, T = 64."""
    r = ctx.find("cifar100", "vgg16", "msat_sc")
    if r is None:
        return "cifar100 / vgg16 msat_sc: run missing\n"
    rp.plot_firing_rate(r["layers"], ctx.figure, title="VGG16 CIFAR-100: firing rate per layer")
    rows = [[i + 1, L["name"], rp.fmt(L["firing_rate"], 4)] for i, L in enumerate(r["layers"])]
    note = rp.parse_note((rp.paper_row(8, "MSAT", "cifar100", "vgg16") or {}).get("note"))
    return (f"Mean firing rate over layers: {r['energy']['mean_firing_rate']:.4f} (paper: 0.0585 in the text, "
            f"{note.get('mean_firing_rate', rp.NA)} in Table 8; per-layer range 0.010-0.127 in the text).\n\n"
            + rp.markdown_table(["#", "layer", "firing rate"], rows) + f"\n![firing rate]({ctx.figure.name})\n")


def agg_demo(ctx: Context) -> str:
    """Fixed threshold vs MSAT on digits: accuracy vs T and steps to the ANN accuracy minus 0.5 pp."""
    fixed, msat = ctx.find("digits", "digits_cnn", "if_max"), ctx.find("digits", "digits_cnn", "msat")
    T = len(msat["acc"])
    steps = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= T]
    rows = [[t, rp.pct(fixed["ann_acc"]), rp.pct(acc_at(fixed, t)), rp.pct(acc_at(msat, t))] for t in steps]
    sf, sm = fixed["steps_to_lossless"], msat["steps_to_lossless"]
    if sm is not None and (sf is None or sm < sf):
        verdict = f"MSAT reaches ANN - 0.5 pp in fewer steps ({sm}) than the fixed threshold ({sf or f'> {T}'})."
    elif sm is not None and sm == sf:
        verdict = f"MSAT and the fixed threshold reach ANN - 0.5 pp at the same step ({sm})."
    else:
        verdict = (f"MSAT does NOT reach ANN - 0.5 pp in fewer steps: MSAT {sm or f'> {T}'}, "
                   f"fixed {sf or f'> {T}'}.")
    rp.plot_curves({"fixed threshold": [100 * a for a in fixed["acc"]], "MSAT": [100 * a for a in msat["acc"]]},
                   ctx.figure, title="digits_cnn on digits: accuracy vs T", hlines={"ANN": 100 * fixed["ann_acc"]})
    table = rp.markdown_table(["T", "ANN (%)", "fixed (%)", "MSAT (%)"], rows)
    print(table, flush=True)
    print(verdict, flush=True)
    return (f"digits_cnn on scikit-learn digits ({fixed['timing']['images']} test images), same checkpoint and "
            f"calibration; MSAT in normalized units.\n\n" + table
            + f"\nSteps to the ANN accuracy minus 0.5 pp: fixed {sf or f'> {T}'}, MSAT {sm or f'> {T}'}. "
            f"{verdict}\n\n![accuracy vs T]({ctx.figure.name})\n")


@dataclass(frozen=True)
class Target:
    title: str
    experiments: tuple[str, ...]
    aggregate: Callable[[Context], str]
    sweep: tuple[str, ...] = ()              # extra multirun overrides, e.g. "method=msat,msat_sc,msat_sc_filtered"
    runtime: str = ""                        # expected runtime on one GPU (README)
    train: tuple[str, ...] = ()              # train_ann.py overrides for missing checkpoints


def _cells(prefix: str, suffixes: Sequence[str] = ("",)) -> tuple[str, ...]:
    return tuple(f"{prefix}_{ds}_{m}{s}" for ds in ("cifar10", "cifar100") for m in ("vgg16", "resnet20")
                 for s in suffixes)


TARGETS: dict[str, Target] = {
    "demo": Target("Demo: fixed threshold vs MSAT on digits", ("demo_fixed", "demo_msat"), agg_demo,
                   runtime="< 3 min on 2 CPU cores", train=("train.epochs=30",)),
    "table3": Target("Table 3: MSAT on CIFAR-10/100", _cells("table3", ("", "_normalized")), agg_table3,
                     runtime="~1.5 h (+ training 4 x ~3 h)"),
    "table4": Target("Table 4: fixed threshold vs MSAT at T = 16..256 (VGG16 CIFAR-10)",
                     ("table4_fixed", "table4_msat", "table4_msat_normalized"), agg_table4, runtime="~30 min"),
    "table5": Target("Table 5: ResNet34 on ImageNet", ("table5_msat", "table5_msat_normalized"), agg_table5,
                     runtime="~6 h (+ training)"),
    "table6": Target("Table 6: IMDB BiLSTM and Speech Commands M5", tuple(
        f"table6_{d}_{v}" for d in ("imdb", "speech") for v in ("fixed", "msat", "msat_normalized")), agg_table6,
                     runtime="~1 h (+ training ~1 h)"),
    "table7": Target("Table 7: spike confidence ablation (ANS, accuracy at T = 32)", _cells("table7"), agg_table7,
                     sweep=("method=" + ",".join(TABLE7_METHODS),), runtime="~20 min"),
    "table8": Target("Table 8: energy, VGG16 CIFAR-100, T = 64", ("table8_burst", "table8_msat"), agg_table8,
                     runtime="~10 min"),
    "fig2": Target("Fig. 2: SIN ratio per layer over t (CIFAR-100)", ("fig2_vgg16", "fig2_resnet20"), agg_fig2,
                   runtime="~30 min"),
    "fig5": Target("Fig. 5: fixed, 0.2 Vth, DTT, DET and MSAT accuracy curves", _cells("fig5"), agg_fig5,
                   sweep=("method=" + ",".join(FIG5_METHODS),), runtime="~5 h"),
    "fig6": Target("Fig. 6: accuracy with and without spike confidence", _cells("fig6"), agg_fig6,
                   sweep=("method=" + ",".join(FIG6_METHODS),), runtime="~40 min"),
    "fig7": Target("Fig. 7: firing rate per layer (VGG16 CIFAR-100, T = 64)", ("fig7_msat",), agg_fig7,
                   runtime="~5 min"),
}


# ----------------------------------------------------------------------------- the driver

def experiment_cell(name: str) -> tuple[str, str]:
    """(dataset, model) an experiment file selects, by composing it (no run)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("convert_eval", overrides=[f"experiment={name}"])
    return str(cfg.dataset.name), str(cfg.model.name)


def smoke_wrapper(name: str, dataset: str) -> str:
    """A config that includes experiment ``name`` and swaps in the synthetic dataset and smoke sizes."""
    smoke_ds = SMOKE_DATASETS[dataset]
    sizes = SMOKE_SIZES[smoke_ds]
    size_lines = f"dataset:\n  n_train: {sizes[0]}\n  n_test: {sizes[1]}\n" if sizes else ""
    return (f"# @package _global_\n# Generated by experiments/reproduce.py --smoke: {name} on {smoke_ds}, "
            f"T={SMOKE_T}.\ndefaults:\n  - /experiment/{name}\n  - override /dataset: {smoke_ds}\n"
            f"  - override /sim: smoke\n  - _self_\nT: {SMOKE_T}\nreport_T: null\nsc:\n  E: {SMOKE_E}\n"
            f"{size_lines}")


def show_path(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def python_exe() -> str:
    return os.environ.get("PYTHON", sys.executable)


def verbose() -> bool:
    """``MSAT_VERBOSE=1``: every job's output streams to the terminal (default: to its log file)."""
    return os.environ.get("MSAT_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


def job_log_path(cmd: Sequence[str], what: str) -> Path:
    """Where a job's output goes: beside the run or sweep directory it writes (``<dir>.log``, under the target's
    work folder), else ``outputs/logs/<what>.log``."""
    for arg in cmd:
        key, _, value = arg.partition("=")
        if key.lstrip("+") in ("hydra.sweep.dir", "hydra.run.dir") and value and "$" not in value:
            d = Path(value) if Path(value).is_absolute() else REPO / value
            return d.with_name(d.name + ".log")
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in what).strip("_") or "job"
    return REPO / "outputs" / "logs" / f"{slug}.log"


def error_lines(text: str) -> list[str]:
    """The ``error:`` lines of a job's output (without the prefix), in order, once each: the lines the entry points
    print, else the ones their logs hold."""
    lines = [line.strip() for line in text.splitlines()]
    own = [line[len("error:"):].strip() for line in lines if line.startswith("error:")]
    logged = [line.split("] - error:", 1)[1].strip() for line in lines if "] - error:" in line]
    errors = list(dict.fromkeys(own or logged))
    jobs = [re.match(r"job \d+ \(.*?\) failed: (.*) \(log: [^()]*\)$", e) for e in errors]
    if len(errors) > 1 and all(jobs) and len({m.group(1) for m in jobs}) == 1:     # every job failed alike
        return [f"{len(errors)} jobs failed: {jobs[0].group(1)}"]
    return errors


def run_cmd(cmd: list[str], what: str, env: Mapping[str, str] | None = None) -> None:
    """Run one job (a subprocess in the repository; ``env``: variables set for it). By default one line says what
    runs and where its log is, and the output goes to that log; a failure raises one ``RuntimeError`` line with the
    job's own ``error:`` message and the log (further error lines, e.g. one per failed job of a multirun, are
    printed before it). ``MSAT_VERBOSE=1`` streams the output instead."""
    env = None if env is None else {**os.environ, **env}
    if verbose():
        print("+ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=REPO, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed (exit code {proc.returncode}): {' '.join(cmd)}")
        return
    log_path = job_log_path(cmd, what)
    made = next((d for d in reversed([log_path.parent, *log_path.parent.parents]) if not d.exists()), None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"{what} (log: {show_path(log_path)}) ...", end="", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 0:
        print(f" done in {time.perf_counter() - t0:.0f} s", flush=True)
        return
    text = log_path.read_text(errors="replace")
    errors = error_lines(text)
    refused = bool(errors) and errors[-1].endswith("no job was started")
    print(" refused" if refused else " failed", flush=True)
    for line in errors[:-1]:
        print(f"  {line}", file=sys.stderr, flush=True)
    last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    why = errors[-1] if errors else f"exit code {proc.returncode}, last output line: {last[0].strip()[:300]}"
    if refused:                                   # refused up front (msat.cli.check_jobs): the line is all there is
        log_path.unlink(missing_ok=True)
        if made is not None:
            _remove_empty(log_path.parent, made)
        raise RuntimeError(f"{what} failed: {why}")
    raise RuntimeError(f"{what} failed: {why} (full output: {show_path(log_path)})")


def _remove_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to ``top`` (the first folder ``run_cmd`` made) while they are empty."""
    for d in [folder, *folder.parents]:
        try:
            d.rmdir()
        except OSError:
            return
        if d == top:
            return


def train_missing(pairs: Sequence[tuple[str, str]], ckpt_dir: Path, work: Path, smoke: bool,
                  extra: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Train the (dataset, model) checkpoints absent from ``ckpt_dir``: one train_ann.py multirun per dataset."""
    missing = [(d, m) for d, m in pairs if not (ckpt_dir / f"{d}_{m}.pt").is_file()]
    for ds, group in itertools.groupby(sorted(missing), key=lambda p: p[0]):
        models = ",".join(m for _, m in group)
        cmd = [python_exe(), "train_ann.py", "-m", f"dataset={ds}", f"model={models}", f"paths.ckpt_dir={ckpt_dir}",
               f"hydra.sweep.dir={work / 'train' / ds}", *extra]
        if smoke:
            sizes = SMOKE_SIZES.get(ds)
            cmd += ["train=smoke", "train.ckpt_path=null", "logger=none"]
            cmd += [f"dataset.n_train={sizes[0]}", f"dataset.n_test={sizes[1]}"] if sizes else []
        run_cmd(cmd, f"training {ds} / {models}")
    return missing


def reproduce(target: str, smoke: bool = False, results_dir: str | Path | None = None,
              work_dir: str | Path | None = None, ckpt_dir: str | Path | None = None,
              extra: Sequence[str] = ()) -> Path:
    """Train what is missing, run the target's multirun, aggregate; returns the markdown path."""
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    spec = TARGETS[target]
    base = REPO / "outputs" / ("smoke" if smoke else "")
    results = Path(results_dir) if results_dir else (base / "results" if smoke else REPO / "results")
    work = (Path(work_dir) if work_dir else base / "reproduce") / target
    ckpt = Path(ckpt_dir or os.environ.get("CKPT_DIR") or (base / "checkpoints" if smoke else REPO / "checkpoints"))
    ckpt, work, results = ckpt.resolve(), work.resolve(), results.resolve()
    cells = {e: experiment_cell(e) for e in spec.experiments}
    pairs = sorted({(SMOKE_DATASETS[d] if smoke else d, m) for d, m in cells.values()})
    train_missing(pairs, ckpt, work, smoke, () if smoke else spec.train)

    runs_dir = work / "runs"
    cmd = [python_exe(), "convert_eval.py", "-m", *spec.sweep, f"paths.ckpt_dir={ckpt}",
           f"hydra.sweep.dir={runs_dir}", "skip_done=true", "resume=true"]
    if smoke:
        conf = work / "conf"
        for e, (ds, _) in cells.items():
            atomic_write_text(conf / "smoke" / f"{e}.yaml", smoke_wrapper(e, ds))
        cmd += [f"+smoke={','.join(spec.experiments)}", f"hydra.searchpath=[file://{conf}]", "logger=none"]
    else:
        cmd += [f"experiment={','.join(spec.experiments)}"]
    cmd += list(extra)
    run_cmd(cmd, f"{target} conversions")

    n_jobs = len(spec.experiments)
    for s in spec.sweep:
        n_jobs *= len(s.split("=", 1)[1].split(","))
    missing = [i for i in range(n_jobs) if not (runs_dir / str(i) / "metrics.json").is_file()]
    if missing:
        raise RuntimeError(f"{target}: jobs {missing} of {runs_dir} wrote no metrics.json (see their logs)")
    runs = [load_run(runs_dir / str(i)) for i in range(n_jobs)]
    results.mkdir(parents=True, exist_ok=True)
    ctx = Context(target=target, runs=runs, cells=cells, smoke=smoke, figure=results / f"{target}.png")
    body = spec.aggregate(ctx)
    head = f"# {spec.title}\n\n"
    if smoke:
        head += (f"**Smoke run**: synthetic data, 1 training epoch, T = {SMOKE_T}. It checks the pipeline; the "
                 "measured numbers mean nothing next to the paper's.\n\n")
    ref = "" if rp.load_reference("paper_tables") is not None else \
        f"Reference CSVs not found under {rp.reference_dir()} (set MSAT_SHARED_DIR): reference columns n/a.\n\n"
    tail = f"\nRuns: `{show_path(runs_dir)}` ({n_jobs} jobs); checkpoints: `{show_path(ckpt)}`.\n"
    out = results / f"{target}.md"
    atomic_write_text(out, head + ref + body + tail)
    print(f"wrote {out}", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help=f"one of: {', '.join(TARGETS)}, or all")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, 1 epoch, T=8; writes to outputs/smoke/")
    ap.add_argument("--results-dir", help="where <target>.md/.png go (default results/, smoke outputs/smoke/results/)")
    ap.add_argument("--work-dir", help="multirun and wrapper directory (default outputs[/smoke]/reproduce)")
    ap.add_argument("--ckpt-dir", help="checkpoint directory (default $CKPT_DIR, else checkpoints/)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every conversion, e.g. sim.batch_size=256")
    args = ap.parse_args(argv)
    targets = [t for t in TARGETS if t != "demo"] if args.target == "all" else [args.target]
    try:
        for t in targets:
            reproduce(t, smoke=args.smoke, results_dir=args.results_dir, work_dir=args.work_dir,
                      ckpt_dir=args.ckpt_dir, extra=args.overrides)
    except (UserError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
