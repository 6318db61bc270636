"""``make reproduce-claims DATASET=fashion_mnist MODEL=resnet20``: the paper's claims tested on real data.

    python -m experiments.claims [--dataset fashion_mnist --model resnet20] [--smoke]

1. runs (or reuses) ``make compare-methods`` for the same (dataset, model): every method on the same
   checkpoints (``conf/compare/<dataset>_<model>.yaml``);
2. adds the runs no comparison row holds: MSAT to T = 256 (the SIN curve of claim 3), MSAT + SC under
   two more SC seeds (claim 4), and MSAT, DTT alone and DET alone in the authors' raw units (claims 1, 2, 5
   in both units);
3. writes ``results/claims_<dataset>.md``: one row per claim with the paper's figure, ours (with its 95 %
   interval or paired test) and a verdict, decided by the rules stated in each ``verdict_*`` function
   before any number was seen. Nothing is tuned: every run takes its method's defaults.

Verdicts: ``holds``, ``does not hold``, or ``inconclusive at 95 %`` (the measured direction agrees but a
paired McNemar test on the same images cannot tell the two apart, or seeds disagree).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from experiments import compare_methods as cm
from experiments.reproduce import REPO, python_exe, run_cmd, show_path
from msat import reporting as rp
from msat.evaluate import steps_to_lossless
from msat.runs import load_run
from msat.stats import mcnemar, wilson_interval
from msat.utils import UserError, atomic_write_text

ALPHA = 0.05
TOL = cm.TOL                                   # "within 0.5 pp of the ANN"
EARLY_T = (4, 8)                               # claim 2: "ahead early"
CLOSE = 0.9                                    # claim 3: SIN share at t=32 >= 90 % of the one at T=256
SIN_T, SIN_FULL = 32, 256
SC_T = 32
SC_SEEDS = (1, 2)                              # besides the comparison's seed 0
HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive at 95 %"


# ----------------------------------------------------------------------------- verdict rules (pure)

def steps_to(run: Mapping, tol: float) -> int | None:
    """First t with accuracy >= ANN - tol (None: never within the run's T)."""
    c = run["counts"]
    return steps_to_lossless(c["correct"], c["ann_correct"], c["total"], tol)


def grid_at_or_after(run: Mapping, t: int) -> int | None:
    """The first step >= t with per-image outcomes recorded (paired tests need them)."""
    later = [s for s in run["per_image"]["steps"] if s >= t]
    return later[0] if later else None


def paired(a: Mapping, b: Mapping, t: int) -> dict:
    """McNemar of run a vs run b at step t, with the accuracy difference a - b."""
    m = mcnemar(cm.outcomes(a, t), cm.outcomes(b, t))
    return {**m, "t": t, "diff": a["acc"][t - 1] - b["acc"][t - 1]}


def faster_one(a: Mapping, b: Mapping, tol: float) -> tuple[str, str]:
    """One ANN: does ``a`` reach ANN - tol in fewer steps than ``b``? -> (outcome, text).

    outcome: ``a`` (a first, and at the first recorded step where a has arrived a is more accurate with
    McNemar p < ALPHA), ``a?`` (a first, not significant there), ``b`` / ``b?`` likewise, ``tie`` (same step),
    ``none`` (neither arrives within T)."""
    sa, sb = steps_to(a, tol), steps_to(b, tol)
    text = f"{sa or '>' + str(len(a['acc']))} vs {sb or '>' + str(len(b['acc']))}"
    if sa is None and sb is None:
        return "none", text
    if sa == sb:
        return "tie", text
    first, second, who = (a, b, "a") if sb is None or (sa is not None and sa < sb) else (b, a, "b")
    t = grid_at_or_after(first, min(s for s in (sa, sb) if s is not None))
    if t is None:
        return who + "?", text
    p = paired(first, second, t)
    sig = p["p"] < ALPHA and p["diff"] > 0
    return (who if sig else who + "?"), text + f" (t={t}: {100 * p['diff']:+.2f} pp, p={p['p']:.2g})"


def verdict_faster(pairs: Sequence[tuple[Mapping, Mapping]], tol: float) -> tuple[str, str]:
    """Claim "a reaches the ANN in fewer steps than b" over one or more ANN seeds: holds when a arrives first
    with a significant paired advantage on every seed; does not hold when on every seed b arrives first
    (significantly) or both arrive at the same step; otherwise inconclusive."""
    outs = [faster_one(a, b, tol) for a, b in pairs]
    codes = [o for o, _ in outs]
    text = "; ".join(t for _, t in outs)
    if all(c == "a" for c in codes):
        return HOLDS, text
    if all(c in ("b", "tie") for c in codes):
        return FAILS, text
    return UNSURE, text


def verdict_at_least_as_fast(a: Mapping, others: Sequence[Mapping], tol: float) -> tuple[str, str]:
    """Claim "a reaches the ANN at least as fast as each of others": does not hold when one of them arrives
    first with a significant paired advantage; holds when a arrives no later than each; else inconclusive."""
    sa = steps_to(a, tol)
    texts, verdict = [], HOLDS
    for o in others:
        code, text = faster_one(o, a, tol)
        texts.append(f"{o['method']['label']}: {text}")
        if code == "a":
            verdict = FAILS
        elif code == "a?" and verdict == HOLDS:
            verdict = UNSURE
        elif code == "none" and verdict == HOLDS and sa is None:
            verdict = UNSURE
    return verdict, f"{a['method']['label']} vs " + "; ".join(texts)


def verdict_early_never(low: Mapping, fixed: Mapping, early: Sequence[int], tol: float) -> tuple[str, str]:
    """Claim "the low threshold is ahead early but never reaches the ANN": holds when it is significantly
    ahead of the fixed threshold at every early T and at its last step it is significantly below ANN - tol
    (upper Wilson bound below); does not hold when it is significantly behind at an early T or it reaches
    ANN - tol; else inconclusive."""
    ps = [paired(low, fixed, t) for t in early]
    T = len(low["acc"])
    c = low["counts"]
    hi = wilson_interval(c["correct"][-1], c["total"])[1]
    reach = steps_to(low, tol)
    text = ", ".join(f"T={p['t']}: {100 * p['diff']:+.2f} pp (p={p['p']:.2g})" for p in ps)
    text += f"; at T={T}: {100 * low['acc'][-1]:.2f} % (upper {100 * hi:.2f}) vs ANN {100 * low['ann_acc']:.2f} %"
    ahead = all(p["diff"] > 0 and p["p"] < ALPHA for p in ps)
    behind = any(p["diff"] < 0 and p["p"] < ALPHA for p in ps)
    if behind or reach is not None:
        return FAILS, text
    if ahead and hi < low["ann_acc"] - tol:
        return HOLDS, text
    return UNSURE, text


def verdict_sin(sin_curve: Mapping[str, Sequence[float]], t: int = SIN_T, close: float = CLOSE) -> tuple[str, str]:
    """Claim 3 on one run's SIN curves (per layer, t = 1..T): the share at t is at least ``close`` of the share
    at T in every layer, and it grows with depth (the last layer's share at T is the largest and the shares
    rise with depth: Spearman rho > 0). Shares are counts over all neurons x images: no sampling test."""
    names = list(sin_curve)
    at_t = np.array([sin_curve[n][t - 1] for n in names])
    at_T = np.array([sin_curve[n][-1] for n in names])
    frac = np.divide(at_t, at_T, out=np.ones_like(at_T), where=at_T > 0)
    ranks = lambda v: np.argsort(np.argsort(v)).astype(float)
    rho = float(np.corrcoef(ranks(np.arange(len(names))), ranks(at_T))[0, 1]) if len(names) > 2 else float("nan")
    last_max = bool(at_T[-1] >= at_T.max())
    text = (f"share at t={t} / at T={len(sin_curve[names[0]])}: min {frac.min():.3f} over {len(names)} layers; "
            f"last layer {at_T[-1]:.4f} (max over layers {at_T.max():.4f}), Spearman rho(depth, share) {rho:.2f}")
    ok_close, ok_depth = bool(frac.min() >= close), last_max and rho > 0
    return (HOLDS if ok_close and ok_depth else FAILS), text


def verdict_sc(plain: Mapping, with_sc: Sequence[Mapping], t: int = SC_T) -> tuple[str, str]:
    """Claim 4: spike confidence lowers the ANS (last layer, at t = E) and raises the accuracy at t, on every SC
    seed. Holds when the ANS is lower and the accuracy significantly higher (McNemar) on every seed; does not
    hold when the ANS is not lower or the accuracy is significantly lower on a seed; else inconclusive."""
    ans0 = plain["layers"][-1]["ans"]
    rows, lower, higher, worse = [], True, True, False
    for r in with_sc:
        p = paired(r, plain, t)
        ans = r["layers"][-1]["ans"]
        lower &= ans < ans0
        higher &= p["diff"] > 0 and p["p"] < ALPHA
        worse |= p["diff"] < 0 and p["p"] < ALPHA
        rows.append(f"seed {r['config']['seed']}: ANS {ans:.3f}, {100 * p['diff']:+.2f} pp (p={p['p']:.2g})")
    text = f"without SC: ANS {ans0:.3f}, acc {100 * plain['acc'][t - 1]:.2f} % at T={t}; with SC: " + "; ".join(rows)
    if not lower or worse:
        return FAILS, text
    return (HOLDS if higher else UNSURE), text


def verdict_energy(msat: Mapping, burst: Mapping, t: int) -> tuple[str, str]:
    """Claim 5: MSAT's energy ratio and mean firing rate at T = t are both below burst spikes' (measured
    operation counts: no sampling test)."""
    em, eb = msat["energy_at"][str(t)], burst["energy_at"][str(t)]
    text = (f"energy ratio {em['ratio']:.3f} vs {eb['ratio']:.3f}; firing rate {em['mean_firing_rate']:.4f} vs "
            f"{eb['mean_firing_rate']:.4f} (T={t})")
    return (HOLDS if em["ratio"] < eb["ratio"] and em["mean_firing_rate"] < eb["mean_firing_rate"] else FAILS), text


# ----------------------------------------------------------------------------- the extra runs

@dataclass(frozen=True)
class Extra:
    """A run no comparison row holds: its key, method and overrides (top-level keys allowed)."""

    key: str
    method: str
    overrides: tuple[str, ...]


def extras(T_full: int, profile: cm.Profile, smoke: bool = False) -> list[Extra]:
    """MSAT to T_full (the SIN curve; ``profile.sin_overrides`` may take fewer images), MSAT + SC under the other
    SC seeds, MSAT in raw units."""
    sc_t = min(SC_T, T_full)
    grid = ",".join(str(t) for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= T_full)
    sin = () if smoke else profile.sin_overrides           # the smoke stand-in has its own sizes
    out = [Extra("sin_msat", "msat", (f"T={T_full}", f"report_T=[{grid}]", *sin))]
    out += [Extra(f"sc_seed{s}", "msat_sc", (f"T={sc_t}", f"seed={s}")) for s in SC_SEEDS]
    if profile.claims_raw:
        out.append(Extra("raw_msat", "msat", ("neuron.units=raw",)))
    return out


def run_extras(jobs: Sequence[Extra], ckpt: Path, data: str, model: str, profile: cm.Profile, steps: Sequence[int],
               work: Path, smoke: bool) -> dict[str, dict]:
    """Run (or reuse, ``skip_done``) each extra job in its own run directory; returns key -> metrics."""
    out = {}
    for job in jobs:
        run_dir = work / job.key
        own = dict(o.split("=", 1) for o in job.overrides)
        T = int(own.get("T", steps[-1]))
        base = [f"T={T}", f"report_T=[{','.join(str(t) for t in steps if t <= T)}]"]
        cmd = [python_exe(), "convert_eval.py", f"method={job.method}", f"dataset={data}", f"model={model}",
               f"ckpt={ckpt}", *[o for o in base if o.split("=", 1)[0] not in own], f"lossless_tol={TOL}",
               "logger=none", "sim.progress=false", f"hydra.run.dir={run_dir}", "skip_done=true", "resume=true",
               f"name=claims_{job.key}", *profile.overrides, *job.overrides]
        cmd += profile.sim_args(smoke)
        run_cmd(cmd, f"claims run {job.key}")
        out[job.key] = load_run(run_dir)
    return out


# ----------------------------------------------------------------------------- the paper's figures

def paper_cell(claim: str) -> str:
    """The paper's figure for a claim, read from its tables (``msat/reference/paper_tables.csv``)."""
    row = lambda t, m, d="cifar10", a="vgg16": rp.paper_row(t, m, d, a) or {}
    note = lambda t, m, d="cifar10", a="vgg16": rp.parse_note(row(t, m, d, a).get("note"))
    if claim == "1":
        t3, t4 = row(3, "MSAT"), note(4, "MSAT")
        return (f"Table 3 (VGG16 CIFAR-10): lossless after {t3.get('steps', rp.NA)} steps; Table 4: MSAT "
                f"{t4.get('T16', rp.NA)} / {t4.get('T32', rp.NA)} % at T=16 / 32 (ANN {row(4, 'MSAT').get('ann_acc', rp.NA)})")
    if claim == "4":
        a, b = row(7, "MSAT w/o SC"), row(7, "MSAT w/ SC")
        return (f"Table 7 (VGG16 CIFAR-10): ANS {rp.parse_note(a.get('note')).get('ANS', rp.NA)} -> "
                f"{rp.parse_note(b.get('note')).get('ANS', rp.NA)}, acc {a.get('snn_acc', rp.NA)} -> "
                f"{b.get('snn_acc', rp.NA)} % at T=32")
    if claim == "5":
        m, b = note(8, "MSAT", "cifar100"), note(8, "Burst", "cifar100")
        return (f"Table 8 (VGG16 CIFAR-100, T=64): energy ratio {m.get('energy_ratio', rp.NA)} vs "
                f"{b.get('energy_ratio', rp.NA)}, firing rate {m.get('mean_firing_rate', rp.NA)} vs "
                f"{b.get('mean_firing_rate', rp.NA)}")
    return {"2": "Fig. 5 (curves, no numbers)", "3": "Fig. 2 (curves, no numbers)"}[claim]


# ----------------------------------------------------------------------------- the table

def claims_table(runs: Mapping[str, Mapping], extra: Mapping[str, Mapping], seeds: Mapping[str, list]) -> str:
    """One row per claim (and per unit system where MSAT runs in both)."""
    fixed, burst, vth = runs["if_max"], runs["burst"], runs["vth_scaled"]
    E = 64 if "64" in runs["msat"]["energy_at"] else len(runs["msat"]["acc"])
    rows = []
    units_runs = [("normalized", runs["msat"])] + ([("raw", extra["raw_msat"])] if "raw_msat" in extra else [])
    for units, m in units_runs:
        msat_seeds = seeds["msat"] if units == "normalized" else [m]
        fixed_seeds = seeds["if_max"] if units == "normalized" else [fixed]
        for tol, what in ((TOL, "ANN - 0.5 pp"), (0.0, "lossless")):
            v, t = verdict_faster(list(zip(msat_seeds, fixed_seeds)), tol)
            rows.append([f"1. MSAT reaches {what} in fewer steps than the fixed threshold ({units})",
                         paper_cell("1"), f"steps MSAT vs fixed per ANN seed: {t}", v])
        v, t = verdict_energy(m, burst, E)
        rows.append([f"5. MSAT's energy ratio and firing rate at T={E} below burst spikes' ({units})",
                     paper_cell("5"), t, v])
    dtt, det = runs["msat_dtt"], runs["msat_det"]
    for name, r in (("DTT alone", dtt), ("DET alone", det)):
        v, t = verdict_faster([(r, fixed)], TOL)
        rows.append([f"2a. {name} converges faster than the fixed threshold", paper_cell("2"),
                     f"steps to ANN - 0.5 pp: {t}", v])
    v, t = verdict_at_least_as_fast(runs["msat"], [dtt, det], TOL)
    rows.append(["2b. MSAT at least as fast as DTT and DET alone", paper_cell("2"), t, v])
    v, t = verdict_early_never(vth, fixed, [s for s in EARLY_T if s <= len(vth["acc"])], TOL)
    rows.append(["2c. 0.2 Vth is ahead early but never reaches the ANN", paper_cell("2"), t, v])
    sin = extra["sin_msat"]
    v, t = verdict_sin(sin["sin_curve"], min(SIN_T, len(sin["acc"])))
    rows.append(["3. SIN is concentrated in early steps and grows with depth (MSAT)", paper_cell("3"), t, v])
    sc_runs = [runs["msat_sc"]] + [extra[f"sc_seed{s}"] for s in SC_SEEDS]
    v, t = verdict_sc(runs["msat"], sc_runs, min(SC_T, len(runs["msat"]["acc"])))
    rows.append(["4. Spike confidence lowers the ANS and raises accuracy at T=32", paper_cell("4"), t, v])
    return rp.markdown_table(["claim", "paper", "ours", "verdict"], rows)


def gather(runs: Sequence[Mapping], jobs: Sequence[cm.Row]) -> tuple[dict, dict]:
    """The plain (no variant overrides) first-seed run of each method, and each method's runs over seeds."""
    first, seeds = {}, {}
    for r, j in zip(runs, jobs):
        if j.ann != "relu" or j.overrides:
            continue
        seeds.setdefault(j.method, []).append(r)
        if j.seed == jobs[0].seed:
            first[j.method] = r
    return first, seeds


def claims(dataset: str = "fashion_mnist", model: str = "resnet20", smoke: bool = False,
           results_dir: str | Path | None = None, work_dir: str | Path | None = None,
           ckpt_dir: str | Path | None = None, n_jobs: int = 1) -> Path:
    cm.compare(dataset, model, smoke, results_dir, work_dir, ckpt_dir, n_jobs=n_jobs)
    ctx = cm.context(dataset, model, smoke, results_dir, work_dir, ckpt_dir)
    runs, jobs = cm.load_comparison(ctx)
    first, seeds = gather(runs, jobs)
    T_full = SIN_FULL if not smoke else ctx.steps[-1]
    ck = cm.ckpt_path(ctx.ckpt, ctx.data, model, "relu", ctx.profile, ctx.profile.seeds[0])
    extra = run_extras(extras(T_full, ctx.profile, smoke), ck, ctx.data, model, ctx.profile, ctx.steps, ctx.work / "claims", smoke)
    cm.check_runs(list(extra.values()), [cm.Row(r["method"]["name"], (), "relu") for r in extra.values()],
                  [ck] * len(extra), ctx.work / "claims")
    sin = extra["sin_msat"]
    figure = ctx.results / f"claims_{dataset}_sin.png"
    rp.plot_curves(sin["sin_curve"], figure, title=f"{model} / {dataset}: SIN ratio per layer over t (MSAT)")
    head = f"# The paper's claims on {dataset} ({model})\n\n"
    if smoke:
        head += "**Smoke run**: synthetic data, 1 training epoch; it checks the pipeline, the numbers mean nothing.\n\n"
    md = (head + f"ANN `{first['msat']['model_spec']['name']}` {first['msat']['model_spec']['kwargs']}, "
          f"{first['msat']['counts']['total']} test images, the runs of `{cm.results_name(dataset, model, ctx.profile)}.md` "
          f"plus {len(extra)} runs of their own (MSAT to T={T_full} for the SIN curve on "
          f"{sin['counts']['total']} test images, MSAT + SC under SC seeds {', '.join(map(str, SC_SEEDS))}"
          + (", MSAT in the authors' raw units: claims 2-4 are in this project's normalized units only)" if "raw_msat" in extra
             else "; every claim in this project's normalized units only: the raw-unit run did not fit this budget, "
                  "`claims_raw` in the profile)") + ". Each verdict follows the rule stated "
          "in `experiments/claims.py`, fixed before the numbers: `holds` needs the claimed direction on every ANN "
          f"seed and a paired McNemar test at p < {ALPHA} on the same images where the claim is about accuracy; "
          f"`{FAILS}` means the opposite direction was measured; `{UNSURE}` the rest. SIN shares and operation "
          "counts are totals over all neurons and images (no sampling test). Units: `normalized` is this "
          "project's default, `raw` the authors' code (SPEC).\n\n" + claims_table(first, extra, seeds)
          + f"\n![SIN ratio]({figure.name})\n\nRuns: `{show_path(ctx.work)}`.\n")
    out = ctx.results / f"claims_{dataset}.md"
    atomic_write_text(out, md)
    print(md, flush=True)
    print(f"wrote {out}", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, 1 epoch; writes to outputs/smoke/")
    ap.add_argument("--results-dir")
    ap.add_argument("--work-dir")
    ap.add_argument("--ckpt-dir")
    ap.add_argument("--jobs", type=int, default=1, help="the comparison's conversions at once (compare_methods)")
    args = ap.parse_args(argv)
    try:
        claims(args.dataset, args.model, args.smoke, args.results_dir, args.work_dir, args.ckpt_dir, args.jobs)
    except (UserError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
