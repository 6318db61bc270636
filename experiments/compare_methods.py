"""``make compare-methods``: every registered conversion method on the same ANN, test split and T grid.

    python -m experiments.compare_methods [--dataset digits --model digits_cnn] [--smoke] [overrides ...]

A (dataset, model) pair may have a profile, ``conf/compare/<dataset>_<model>.yaml`` (:class:`Profile`:
model width and input padding, training epochs, ANN seeds, T grid, which rows also run on the other
seeds); without one the digits defaults apply (T up to 256, one seed, every variant).

1. trains (or resumes) the ANNs the rows need: the ReLU ANN of each seed and the QCFS twin
   (``model.act=qcfs``) for the methods that convert a QCFS-trained network (:func:`ckpt_path`);
2. runs one Hydra multirun of ``convert_eval.py``: one job per row, the rows coming from the method
   registry (``Method.variants``: e.g. SNN Calibration calibrated for T = 8, 32 and 256, robust norm
   at 99.9 and 99.99, MSAT and SRP on both ANNs; a profile may keep each method's default only), each
   job in ``runs/compare_<row key>``, simulated once to the last T of the grid on the whole test split;
3. writes ``results/methods.md`` (profiled: ``methods_<dataset>_<model>.md``): per row the method, its
   ANN and seed, calibration cost, accuracy at each T with its 95 % Wilson interval, steps to ANN - 0.5 pp
   and to lossless, energy ratio and mean firing rate at T = 64; the negative spikes of signed-spike rows;
   mean +- sd across ANN seeds; McNemar's paired test of every row against ``if_max`` and ``msat``; the
   methods' published anchors; and the ``.png`` of accuracy vs T.

Runs are identified by what ran (``metrics.json``: method, its parameters, the ANN, the checkpoint's
sha256), never by names: :func:`check_runs` refuses a run of another row or another checkpoint.
``--smoke`` runs the same pipeline on synthetic stand-ins (1 training epoch of 2 batches, T = 16) and
writes to ``outputs/smoke/``. Nothing is tuned per method: every row takes its method's defaults.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml

from experiments.reproduce import REPO, python_exe, run_cmd, show_path
from msat import reporting as rp
from msat.checkpoint import last_ckpt_path
from msat.evaluate import steps_to_lossless
from msat.measure import unpack_outcomes
from msat.methods import get_method, list_methods
from msat.runs import load_run
from msat.stats import mcnemar, mean_sd, wilson_interval
from msat.config import from_mapping
from msat.utils import UserError, atomic_write_text, file_sha256

T_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SMOKE_T_GRID = (1, 2, 4, 8, 16)
ENERGY_T = 64
TOL = 0.005                                   # "ANN - 0.5 pp"
SMOKE_DATASETS = {"digits": "synthetic_digits", "fashion_mnist": "synthetic_fashion_mnist", "cifar10": "synthetic_cifar", "cifar100": "synthetic_cifar100",
                  "imagenet": "synthetic_imagenet", "imdb": "synthetic_imdb", "speech_commands": "synthetic_speech"}
SMOKE_SIZES = ("dataset.n_train=256", "dataset.n_test=64")     # 256: two calibration batches of 128


@dataclass(frozen=True)
class Profile:
    """How one (dataset, model) is compared: ``conf/compare/<dataset>_<model>.yaml``, else the digits defaults.

    ``tag`` names the checkpoints (``<dataset>_<model>_<tag>[_qcfs]_s<seed>.pt``; empty: the plain
    ``<dataset>_<model>[_qcfs].pt`` of train_ann.py), ``overrides`` go to training and every conversion
    (model width, input padding), ``seeds`` are the ReLU ANN's training seeds (the QCFS twin takes the first),
    ``seed_methods`` the methods whose rows also run on the other seeds."""

    tag: str = ""
    overrides: tuple[str, ...] = ()
    train_overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    seed_methods: tuple[str, ...] = ()
    t_grid: tuple[int, ...] = T_GRID
    paired_T: tuple[int, ...] = ()
    sim_overrides: tuple[str, ...] = ()     # sim.* overrides of every full-size conversion (batch, chunk)
    variants: str = "all"                    # all: every Method.variants row; first: each method's default row
    sin_overrides: tuple[str, ...] = ()      # claims: extra overrides of the long SIN run (e.g. fewer images)
    claims_raw: bool = True                  # claims: also run MSAT in the authors' raw units
    max_run_seeds: int | None = None         # cap on a row's run seeds (SNN Calibration official: 5); null: none

    @property
    def named(self) -> bool:
        return bool(self.tag)

    def sim_args(self, smoke: bool) -> list[str]:
        """The simulation overrides of a conversion: the smoke settings, else the profile's ``sim_overrides``."""
        return ["sim=smoke", *SMOKE_SIZES] if smoke else list(self.sim_overrides)


def load_profile(dataset: str, model: str) -> Profile:
    """The profile of (dataset, model); unknown keys and an unsorted T grid are refused."""
    path = REPO / "conf" / "compare" / f"{dataset}_{model}.yaml"
    if not path.is_file():
        return Profile()
    raw = yaml.safe_load(path.read_text()) or {}
    known = set(Profile.__dataclass_fields__)
    if set(raw) - known:
        raise UserError(f"{path}: unknown keys {sorted(set(raw) - known)}; valid: {sorted(known)}")
    prof = Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if list(prof.t_grid) != sorted(set(prof.t_grid)) or not prof.seeds or any(t not in prof.t_grid for t in prof.paired_T):
        raise UserError(f"{path}: t_grid must be increasing, seeds non-empty, paired_T inside t_grid")
    if any(not (o.startswith("sim.") and "=" in o) for o in prof.sim_overrides):
        raise UserError(f"{path}: sim_overrides must be sim.<key>=<value> overrides, got {list(prof.sim_overrides)}")
    if prof.variants not in ("all", "first"):
        raise UserError(f"{path}: variants must be all or first, got {prof.variants!r}")
    return prof


@dataclass(frozen=True)
class Row:
    """One job of the comparison: a method, its overrides (dotted keys), the ANN it converts and its seed."""

    method: str
    overrides: tuple[tuple[str, Any], ...]
    ann: str
    seed: int = 0                 # the ANN's training seed (which checkpoint)
    run_seed: int = 0             # the run's seed= (calibration order and augmentation, SC draws)

    @property
    def key(self) -> str:
        parts = [self.method, self.ann] + [f"{k.split('.')[-1]}{v}" for k, v in self.overrides]
        parts += [f"s{self.seed}"] if self.seed else []
        parts += [f"r{self.run_seed}"] if self.run_seed else []
        return "_".join(str(p).replace(".", "p") for p in parts)

    @property
    def variant(self) -> tuple:
        """What the row runs, its seeds aside (rows of one variant form its across-seed statistics)."""
        return self.method, self.overrides, self.ann


def rows(T: int, profile: Profile | None = None) -> list[Row]:
    """Every registered method's comparison rows (``Method.variants``) on the first seed, then the rows of
    ``profile.seed_methods`` on the other seeds; rows calibrated for a T beyond the simulated one are left
    out (smoke runs)."""
    profile = profile or Profile()
    out = []
    for name in list_methods():
        cls = get_method(name)
        for variant in cls.variants[:cls.headline] if profile.variants == "first" else cls.variants:
            v = dict(variant)
            ann = v.pop("ann", cls.ann[0])
            if v.get("method.calib_T", 0) > T:
                continue
            n = min(run_seeds(cls, v), profile.max_run_seeds or 10**9)
            out += [Row(name, tuple(sorted(v.items())), ann, profile.seeds[0], s) for s in range(n)]
    extra = [Row(r.method, r.overrides, r.ann, s) for s in profile.seeds[1:] for r in out
             if r.method in profile.seed_methods and r.ann == "relu"]
    return out + extra


def run_seeds(cls: Any, overrides: Mapping[str, Any]) -> int:
    """The run seeds a row of ``cls`` with ``overrides`` averages over (``Method.run_seeds`` of its parameters)."""
    node = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("method.")}
    return cls.run_seeds(from_mapping(cls.params, {**node, "name": cls.name}, "method"))


def row_config(row: Row, ckpt: Path) -> str:
    """The generated config of one row: the method, its overrides, the checkpoint and activation of its ANN."""
    nested: dict[str, dict] = {}
    lines = [f"# @package _global_\n# Generated by experiments/compare_methods.py: {row.method} on the {row.ann} ANN.",
             "defaults:", f"  - override /method: {row.method}", "  - _self_",
             f"name: compare_{row.key}", f"ckpt: {ckpt}"] + ([f"seed: {row.run_seed}"] if row.run_seed else [])
    for k, v in row.overrides:
        group, _, leaf = k.partition(".")
        nested.setdefault(group, {})[leaf] = v
    if row.ann == "qcfs":
        nested.setdefault("model", {})["act"] = "qcfs"
    for group, values in nested.items():
        lines.append(f"{group}:")
        lines += [f"  {k}: {v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def ckpt_path(ckpt_dir: Path, dataset: str, model: str, ann: str, profile: Profile | None = None,
              seed: int = 0) -> Path:
    """The checkpoint of one ANN (``Profile`` for the naming)."""
    qcfs = "" if ann == "relu" else f"_{ann}"
    if profile is None or not profile.named:
        return ckpt_dir / f"{dataset}_{model}{qcfs}.pt"
    return ckpt_dir / f"{dataset}_{model}_{profile.tag}{qcfs}_s{seed}.pt"


def training_done(path: Path) -> bool:
    """The checkpoint exists and no unfinished training of it is waiting (its ``_last.pt`` reached the
    configured epochs, or there is none: a checkpoint given by the user)."""
    last = last_ckpt_path(path)
    if not path.is_file():
        return False
    if not last.is_file():
        return True
    state = torch.load(last, map_location="cpu", weights_only=True)
    return int(state["epoch"]) >= int(state["config"]["train"]["epochs"])


def train_anns(needed: Sequence[tuple[str, int]], ckpt_dir: Path, dataset: str, model: str, work: Path, smoke: bool,
               profile: Profile) -> None:
    """Train (or resume) each needed (ANN, seed) whose training is not complete (one train_ann.py run each)."""
    for ann, seed in needed:
        path = ckpt_path(ckpt_dir, dataset, model, ann, profile, seed)
        if training_done(path):
            continue
        cmd = [python_exe(), "train_ann.py", f"dataset={dataset}", f"model={model}", f"model.act={ann}",
               f"seed={seed}", f"hydra.run.dir={work / 'train' / path.stem}", "logger=none", "train.resume=true",
               *profile.overrides, *(() if smoke else profile.train_overrides)]
        if smoke:
            cmd += ["train=smoke", *SMOKE_SIZES]
        cmd.append(f"train.ckpt_path={path}")
        run_cmd(cmd, f"training the {ann} ANN, seed {seed} ({dataset} / {model})")


# ----------------------------------------------------------------------------- the table

def _pct(v: float | None) -> str:
    return rp.pct(v)


def steps_cell(run: Mapping, tol: float) -> str:
    """Steps to ``ANN - tol``; with a pre-simulation (SRP) also the latency tau + T."""
    c = run["counts"]
    t = steps_to_lossless(c["correct"], c["ann_correct"], c["total"], tol)
    if t is None:
        return f"> {len(run['acc'])}"
    tau = run["method"]["presim_steps"]
    return f"{t} ({tau + t})" if tau else str(t)


def ann_cell(run: Mapping) -> str:
    spec = run["model_spec"]
    return "ReLU" if spec["act"] == "relu" else f"{spec['act'].upper()} (L={spec['act_L']}), retrained"


def cost_cell(run: Mapping) -> str:
    c = run["method"]["cost"]
    extra = f" + {c['presim_steps']} presim steps/batch" if c["presim_steps"] else ""
    return f"{c['calib_seconds']:.2f} s, {c['forwards']} fwd{extra}"


def acc_cell(run: Mapping, t: int) -> str:
    """Accuracy after t steps (%) and its 95 % Wilson interval over the test images."""
    c = run["counts"]
    k, n = c["correct"][t - 1], c["total"]
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.2f} ({100 * lo:.1f}-{100 * hi:.1f})"


def seed_of(run: Mapping) -> int | None:
    """The training seed of the run's ANN (recorded from its checkpoint; None for a foreign checkpoint)."""
    return (run.get("train_run") or {}).get("seed")


def table(runs: Sequence[Mapping], steps: Sequence[int]) -> str:
    """The measured comparison table (one row per run, in job order); accuracy cells with 95 % intervals."""
    e_t = str(ENERGY_T) if str(ENERGY_T) in runs[0]["energy_at"] else str(steps[-1])
    head = ["method", "ANN (seed)", "needs retraining", "calibration cost", *[f"T={t}" for t in steps],
            "steps to ANN-0.5pp", "steps to lossless", f"energy ratio T={e_t}", f"firing rate T={e_t}"]
    body = []
    for r in runs:
        retrain = "yes" if r["model_spec"]["act"] != "relu" else "no"
        body.append([r["method"]["label"], f"{ann_cell(r)} ({seed_of(r)})", retrain, cost_cell(r),
                     *[acc_cell(r, t) for t in steps], steps_cell(r, TOL), steps_cell(r, 0.0),
                     rp.fmt(r["energy_at"][e_t]["ratio"], 3), rp.fmt(r["energy_at"][e_t]["mean_firing_rate"], 4)])
    return rp.markdown_table(head, body)


def outcomes(run: Mapping, t: int) -> np.ndarray:
    """The run's per-image outcomes after t steps, checked against its counts (a record that does not add
    up to the accuracy it claims is refused)."""
    rec = run["per_image"]
    bits = unpack_outcomes(rec["correct"][str(t)], rec["n"])
    if rec["n"] != run["counts"]["total"] or int(bits.sum()) != run["counts"]["correct"][t - 1]:
        raise RuntimeError(f"run {run['name']}: its per-image outcomes at t={t} do not add up to its accuracy")
    return bits


def negative_spikes_note(runs: Sequence[Mapping]) -> str:
    """The negative spikes each signed-spike row emitted (SpiCalib acts only through them)."""
    lines = [f"- {r['method']['label']} ({ann_cell(r)}): {r['negative_spikes']} negative spikes over "
             f"{r['counts']['total']} images x T={len(r['acc'])} ({r['negative_spikes'] / r['counts']['total']:.2f} "
             "per image)" for r in runs if r["method"]["name"] == "spicalib" or r.get("negative_spikes")]
    return ("Negative spikes emitted (a SpiCalib row that emits none equals plain IF at every t):\n\n"
            + "\n".join(lines) + "\n\n") if lines else ""


def seeds_table(runs: Sequence[Mapping], jobs: Sequence[Row], steps: Sequence[int]) -> str:
    """Rows run on several ANN seeds or run seeds: mean +- sd across them of the ANN's and the SNN's accuracy."""
    groups: dict[tuple, list[tuple[Mapping, Row]]] = {}
    for r, job in zip(runs, jobs):
        groups.setdefault(job.variant, []).append((r, job))
    body = []
    for group in (g for g in groups.values() if len(g) > 1):
        cell = lambda vals: "%.2f +- %.2f" % tuple(100 * v for v in mean_sd(vals))
        rs = [r for r, _ in group]
        body.append([rs[0]["method"]["label"], ann_cell(rs[0]), ", ".join(str(seed_of(r)) for r in rs),
                     ", ".join(str(j.run_seed) for _, j in group), cell([r["ann_acc"] for r in rs]),
                     *[cell([r["acc"][t - 1] for r in rs]) for t in steps]])
    if not body:
        return ""
    return ("## Across seeds\n\nMean +- sample sd over independently trained ANNs (ANN seeds: the spread a new "
            "training run brings, which the per-image intervals above do not contain), or over the run's seed on one "
            "ANN (run seeds: the calibration batches' order and augmentation, as SNN Calibration's official "
            "protocol averages).\n\n"
            + rp.markdown_table(["method", "ANN", "ANN seeds", "run seeds", "ANN acc", *[f"T={t}" for t in steps]],
                                body) + "\n")


def paired_table(runs: Sequence[Mapping], jobs: Sequence[Row], paired_T: Sequence[int]) -> str:
    """McNemar's exact test of each first-seed row against if_max and against msat (same images, same T)."""
    first = [(r, j) for r, j in zip(runs, jobs) if j.seed == jobs[0].seed and j.run_seed == 0]
    refs = {name: next((r for r, j in first if j.method == name and j.ann == "relu" and not j.overrides), None)
            for name in ("if_max", "msat")}
    if not paired_T or any(v is None for v in refs.values()):
        return ""
    head = ["method", "ANN", *[f"vs {n} T={t}" for n in refs for t in paired_T]]
    body = []
    for r, _ in first:
        cells = []
        for ref in refs.values():
            for t in paired_T:
                if r is ref:
                    cells.append("-")
                    continue
                m = mcnemar(outcomes(r, t), outcomes(ref, t))
                pv = f"p={m['p']:.2g}" if m["p"] > 0 else "p<1e-300"        # below the float range
                cells.append(f"{100 * (r['acc'][t - 1] - ref['acc'][t - 1]):+.2f} ({pv})")
        body.append([r["method"]["label"], ann_cell(r), *cells])
    return ("## Paired tests\n\nAccuracy difference (pp) of each row against max-norm IF and against MSAT at the "
            "same T, on the same test images, with the two-sided p-value of McNemar's exact test (only the images "
            "one gets right and the other wrong count). Rows on the QCFS ANN are compared with the ReLU ANN's "
            "reference: the difference includes the ANN's.\n\n" + rp.markdown_table(head, body) + "\n")


def anchors_table(dataset: str, model: str) -> str:
    """The methods' published numbers (shared/anchors/baselines.csv): what a user with the data should see."""
    rows_ = [[a["method"], a["dataset"], a["model"], a["ann_acc"] or rp.NA, a["T"], a["snn_acc"], a["source"],
              a["note"] or "-"] for a in rp.load_anchors()]
    if not rows_:
        return "Anchors not found (set MSAT_SHARED_DIR).\n"
    here = [r for r in rows_ if (r[1], r[2]) == (dataset, model)]
    note = (f"Rows for {dataset} / {model} match this run's setting.\n\n" if here else
            f"None is for {dataset} / {model}: these are the numbers a run on their dataset and model should "
            "approach.\n\n")
    return note + rp.markdown_table(["method", "dataset", "model", "ANN (%)", "T", "SNN (%)", "source", "note"], rows_)


def plot(runs: Sequence[Mapping], path: Path, title: str) -> None:
    series = {f"{r['method']['label']}" + (" [QCFS ANN]" if r["model_spec"]["act"] != "relu" else ""):
              [100 * a for a in r["acc"]] for r in runs}
    anns = {f"ANN ({ann_cell(r).split(',')[0]})": 100 * r["ann_acc"] for r in runs}
    rp.plot_curves(series, path, title=title, hlines=anns, legend_outside=True)


def aggregate(runs: Sequence[Mapping], jobs: Sequence[Row], dataset: str, model: str, steps: Sequence[int],
              figure: Path, smoke: bool, profile: Profile) -> str:
    first = [r for r, j in zip(runs, jobs) if j.seed == jobs[0].seed]
    plot(first, figure, f"{model} on {dataset}: accuracy vs T, every method")
    total = runs[0]["counts"]["total"]
    head = f"# Conversion methods on one ANN: {model} / {dataset}\n\n"
    if smoke:
        head += ("**Smoke run**: synthetic data, 1 training epoch; it checks the pipeline, the numbers mean "
                 "nothing.\n\n")
    spec = first[0]["model_spec"]
    seconds = sum(r["timing"]["total_seconds"] for r in runs)
    return (head + f"Every registered method on the same trained ANN (`{spec['name']}`, constructor arguments "
            f"{spec['kwargs']}; the QCFS rows on its QCFS-trained twin), the same {total} test images and one "
            f"simulation to T={steps[-1]} (accuracy after t steps for every t). The ANN's training seed is in "
            "parentheses. Each method runs with its own defaults; nothing is tuned per method. Accuracy cells: "
            "% (95 % Wilson interval over the test images). Calibration cost: wall seconds and forwards (ANN "
            "passes + SNN steps on the calibration batch). SRP: steps count T, the latency tau + T is in "
            "parentheses. SNN Calibration is calibrated for one T (in its label), its curve at other T is shown "
            "as measured.\n\n" + table(first, steps)
            + f"\n![accuracy vs T]({figure.name})\n\n" + negative_spikes_note(first) + seeds_table(runs, jobs, steps)
            + paired_table(runs, jobs, [t for t in profile.paired_T if t in steps])
            + f"\nConversions: {len(runs)} runs, {seconds / 60:.1f} min of calibration and simulation in all "
            "(the runs' own wall times, this machine).\n\n## Published anchors\n\n" + anchors_table(dataset, model))


# ----------------------------------------------------------------------------- the driver

def results_name(dataset: str, model: str, profile: Profile) -> str:
    """``methods`` for the digits default, ``methods_<dataset>_<model>`` for a profiled comparison."""
    return f"methods_{dataset}_{model}" if profile.named else "methods"


def check_runs(runs: Sequence[Mapping], jobs: Sequence[Row], ckpts: Sequence[Path], runs_dir: Path) -> None:
    """Every run is the one of its row: the method and ANN it ran, and the checkpoint content (sha256) its row
    names, so a table can never read another seed's or another checkpoint's run."""
    digests = {p: file_sha256(p) for p in set(ckpts)}
    for r, job, ck in zip(runs, jobs, ckpts):
        where = f"{runs_dir} ({job.key})"
        if r["method"]["name"] != job.method or r["model_spec"]["act"] != job.ann:
            raise RuntimeError(f"{where}: a job ran {r['method']['name']} on the {r['model_spec']['act']} "
                               f"ANN, its row is {job.method} on the {job.ann} ANN")
        if r.get("ckpt_sha256") != digests[ck]:
            raise RuntimeError(f"{where}: its result comes from another checkpoint than {ck} (sha256 "
                               "differs): rerun it")


@dataclass(frozen=True)
class Context:
    """Where one comparison lives: its profile, directories, (smoke) dataset, T grid and jobs."""

    dataset: str
    model: str
    smoke: bool
    profile: Profile
    results: Path
    work: Path
    ckpt: Path
    data: str
    steps: tuple[int, ...]
    jobs: tuple[Row, ...]

    @property
    def runs_dir(self) -> Path:
        return self.work / "runs"

    def run_dir(self, job: Row) -> Path:
        """A job's directory is named by its row (``name: compare_<key>``): a subset or a reordered job list
        reuses what ran."""
        return self.runs_dir / f"compare_{job.key}"

    def ckpts(self) -> list[Path]:
        return [ckpt_path(self.ckpt, self.data, self.model, j.ann, self.profile, j.seed) for j in self.jobs]


def context(dataset: str = "digits", model: str = "digits_cnn", smoke: bool = False,
            results_dir: str | Path | None = None, work_dir: str | Path | None = None,
            ckpt_dir: str | Path | None = None) -> Context:
    profile = load_profile(dataset, model)
    base = REPO / "outputs" / ("smoke" if smoke else "")
    results = Path(results_dir) if results_dir else (base / "results" if smoke else REPO / "results")
    work = (Path(work_dir) if work_dir else base / "compare_methods") / f"{dataset}_{model}"
    ckpt = Path(ckpt_dir or os.environ.get("CKPT_DIR") or (base / "checkpoints" if smoke else REPO / "checkpoints"))
    steps = tuple(SMOKE_T_GRID if smoke else profile.t_grid)
    return Context(dataset, model, smoke, profile, results.resolve(), work.resolve(), ckpt.resolve(),
                   SMOKE_DATASETS.get(dataset, dataset) if smoke else dataset, steps,
                   tuple(rows(steps[-1], profile)))


def load_comparison(ctx: Context) -> tuple[list[dict], list[Row]]:
    """The committed, verified run of every job (in job order)."""
    missing = [j.key for j in ctx.jobs if not (ctx.run_dir(j) / "metrics.json").is_file()]
    if missing:
        raise RuntimeError(f"compare-methods: jobs {missing} of {ctx.runs_dir} wrote no metrics.json (see their logs)")
    runs = [load_run(ctx.run_dir(j)) for j in ctx.jobs]
    check_runs(runs, ctx.jobs, ctx.ckpts(), ctx.runs_dir)
    return runs, list(ctx.jobs)


def parallel(n_jobs: int) -> tuple[list[str], dict[str, str] | None]:
    """The overrides and environment of a conversion multirun of ``n_jobs`` processes at once (Hydra's ``local``
    launcher), each with its share of the cores as threads; ``n_jobs`` 1: one job after the other."""
    if n_jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {n_jobs}")
    if n_jobs == 1:
        return [], None
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    return ["hydra/launcher=local", f"hydra.launcher.n_jobs={n_jobs}"], {"OMP_NUM_THREADS": str(threads)}


def launch(ctx: Context, jobs: Sequence[Row], extra: Sequence[str] = (), n_jobs: int = 1) -> None:
    """One convert_eval multirun over ``jobs`` (each into ``ctx.run_dir(job)``; a committed result of the
    same config and checkpoint is reused), ``n_jobs`` of them at once."""
    conf = ctx.work / "conf"
    ckpts = dict(zip(ctx.jobs, ctx.ckpts()))
    for r in jobs:
        atomic_write_text(conf / "row" / f"{r.key}.yaml", row_config(r, ckpts[r]))
    steps = ctx.steps
    cmd = [python_exe(), "convert_eval.py", "-m", f"+row={','.join(r.key for r in jobs)}",
           f"hydra.searchpath=[file://{conf}]", f"dataset={ctx.data}", f"model={ctx.model}", f"T={steps[-1]}",
           f"report_T=[{','.join(map(str, steps))}]", f"lossless_tol={TOL}", "logger=none", "sim.progress=false",
           f"paths.ckpt_dir={ctx.ckpt}", f"hydra.sweep.dir={ctx.runs_dir}", "hydra.sweep.subdir=${name}",
           "skip_done=true", "resume=true", *ctx.profile.overrides]
    cmd += ctx.profile.sim_args(ctx.smoke)
    launcher, env = parallel(n_jobs)
    run_cmd(cmd + launcher + list(extra), f"compare-methods conversions ({len(jobs)} jobs)", env=env)


def first_table(md: str) -> str:
    """The first markdown table of ``md``, its accuracy cells without intervals (a terminal-sized summary)."""
    lines = md.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(re.sub(r" \(\d+\.\d-\d+\.\d\)", "", line))
    return "\n".join(table)


def compare(dataset: str = "digits", model: str = "digits_cnn", smoke: bool = False,
            results_dir: str | Path | None = None, work_dir: str | Path | None = None,
            ckpt_dir: str | Path | None = None, extra: Sequence[str] = (), n_jobs: int = 1) -> Path:
    """Train what is missing, run every method's rows as one multirun (``n_jobs`` conversions at once),
    aggregate; returns the markdown path."""
    parallel(n_jobs)                                   # a bad --jobs is refused before any training
    ctx = context(dataset, model, smoke, results_dir, work_dir, ckpt_dir)
    profile, jobs, steps = ctx.profile, ctx.jobs, ctx.steps
    needed = sorted({(j.ann, j.seed) for j in jobs}, key=lambda p: (("relu", "qcfs").index(p[0]), p[1]))
    train_anns(needed, ctx.ckpt, ctx.data, model, ctx.work, smoke, profile)
    launch(ctx, jobs, extra, n_jobs)
    runs, _ = load_comparison(ctx)
    ctx.results.mkdir(parents=True, exist_ok=True)
    name = results_name(dataset, model, profile)
    md = aggregate(runs, jobs, dataset, model, steps, ctx.results / f"{name}.png", smoke, profile)
    md += f"\nRuns: `{show_path(ctx.runs_dir)}` ({len(jobs)} jobs); checkpoints: `{show_path(ctx.ckpt)}`.\n"
    out = ctx.results / f"{name}.md"
    atomic_write_text(out, md)
    print(first_table(md), flush=True)                 # the rest (intervals, seeds, tests, anchors) is in the file
    print(f"wrote {out} (+ .png): intervals, seeds, paired tests and anchors there", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, 1 epoch, T=16; writes to outputs/smoke/")
    ap.add_argument("--results-dir")
    ap.add_argument("--work-dir")
    ap.add_argument("--ckpt-dir")
    ap.add_argument("--jobs", type=int, default=1, help="conversions at once (Hydra's local launcher), each with "
                    "its share of the cores as threads; default 1: one after the other")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every conversion")
    args = ap.parse_args(argv)
    try:
        compare(args.dataset, args.model, args.smoke, args.results_dir, args.work_dir, args.ckpt_dir, args.overrides,
                args.jobs)
    except (UserError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
