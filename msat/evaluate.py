"""``run(cfg)``: the pure function behind ``convert_eval.py``, over four named stages.

    prepare         checkpoint, data, model, calibration batches, conversion (the method's stages)
    simulate_split  the whole test split to T once: counts, a periodic state, resume
    summarize       the counts -> the metrics dict (accuracy curve, layers, energy, method, cost)
    write           one committed set of files in the run directory (msat.runs), and the logger

Under ``torchrun`` each rank simulates every ``world_size``-th test batch and the integer counts
are summed, so the numbers equal a single-process run exactly. Long runs checkpoint: every
``sim.checkpoint_every`` batches each rank writes its raw counts to ``eval_state[.rankN].pt`` in
the run directory (atomically); ``resume=true`` in the same run directory continues from the next
batch and gives the numbers of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from . import reporting
from .checkpoint import default_ckpt_path, load_checkpoint, load_model_weights
from .config import ConversionConfig, EvalConfig, from_mapping
from .conversion import conversion_config, convert
from .data import build_data, build_loader, dataset_config
from .measure import AccuracyCurve, SpikeStats, energy_report, layer_macs
from .models import build_model
from .models.build import activation_sites, check_input, model_spec
from .runs import Staging, commit_set, load_run, run_id, run_in_dir, wait_for_checkpoint, write_config
from .simulation import check_sc_steps, simulate, tune_cpu_allocator
from .training import ProgressLog
from .utils import (DistEnv, Interrupted, available_memory, StopSignals, UserError, all_reduce_sum, atomic_torch_save,
                    atomic_write_text, file_sha256, hydra_run_dir, resume_command, seed_everything, to_plain, versions)

log = logging.getLogger(__name__)

DEFAULT_REPORT_T = (1, 4, 8, 16, 32, 64, 128, 256)
LAYER_COLUMNS = ("name", "scale", "firing_rate", "sin_ratio", "q", "ans", "p")


# ----------------------------------------------------------------------------- config checks

def report_steps(T: int, report_T: Any = None) -> list[int]:
    """The steps shown in summaries: ``report_T`` (in 1..T: ``EvalConfig`` checks it) or 1, 4, 8, ..., 256 up to T,
    plus T."""
    if report_T is None:
        steps = [t for t in DEFAULT_REPORT_T if t <= T]
        return steps if T in steps else steps + [T]
    return sorted({int(t) for t in report_T})


def check_config(cfg: Any) -> tuple[EvalConfig, ConversionConfig]:
    """Every check that can fail before compute: keys, types and ranges of every group (one
    validator), names, the method and its conversion config, SC E vs T, the model's arguments (built
    on the meta device) and the memory the per-step curves need. The two validated configs are what the
    stages read from then on (``prepare`` converts with the ``ConversionConfig`` as it is)."""
    ecfg = from_mapping(EvalConfig, cfg)
    ds = dataset_config(ecfg.dataset)
    ccfg = conversion_config(ecfg, T=ecfg.T)             # the typed groups of ecfg, checked above
    if ccfg.sc.enabled:
        check_sc_steps(ccfg.sc.E, ecfg.T)
    layers = activation_sites(model_spec(ecfg.model), ds["num_classes"])
    check_memory(ecfg.T, layers)
    return ecfg, ccfg


# bytes per time step and spiking layer that a run keeps: SpikeStats' four int64 counts, the four curves as
# Python floats, the two curves metrics.json holds, their JSON text (a generous bound)
BYTES_PER_STEP_AND_LAYER = 4 * 8 + 4 * 32 + 2 * 32 + 2 * 24


def check_memory(T: int, layers: int) -> None:
    """Refuse a T whose per-step curves cannot fit in memory (before any data is read)."""
    need = T * (16 + max(layers, 1) * BYTES_PER_STEP_AND_LAYER)
    avail = available_memory(torch.device("cpu"))
    if avail is not None and need > avail:
        raise UserError(f"T={T} needs about {need / 2**30:.1f} GiB for the per-step curves of {layers} spiking layers "
                        f"(accuracy, SIN and firing rate after every t), more than the {avail / 2**30:.1f} GiB "
                        "available; lower T")


# ----------------------------------------------------------------------------- distributed

def check_shards(n: int, batch_size: int, world: int) -> None:
    """Every rank needs at least one test batch: a rank without any holds no counts to all-reduce."""
    batches = -(-n // batch_size)
    if batches < world:
        raise UserError(f"the test split has {batches} batches of sim.batch_size={batch_size} for "
                        f"{world} processes; lower sim.batch_size or the number of processes")


def shard_loader(ds, batch_size: int, rank: int, world: int, start: int = 0) -> tuple[DataLoader, list[int]]:
    """Every ``world``-th batch of the unshuffled split from ``rank`` on, and those batches' indices;
    ``start``: skip this rank's first ``start`` batches (a resumed run).

    Whole batches are sharded (not samples), so each batch is exactly the one a single process
    simulates: same samples, same batch size, same SC generator seed.
    """
    n = len(ds)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    mine = list(range(rank, len(batches), world))[start:]
    return DataLoader(ds, batch_sampler=[batches[i] for i in mine]), mine


# ----------------------------------------------------------------------------- checkpoint / resume

# config keys that leave the numbers unchanged: a state written under other values is reusable
RESULT_NEUTRAL_KEYS = ("resume", "skip_done", "logger", "paths.output_dir", "sim.progress", "sim.tune_malloc", "sim.chunk_bytes",
                       "sim.checkpoint_every", "sim.stop_after_batches")


class StopRequested(RuntimeError):
    """``sim.stop_after_batches`` ended the run early (a test hook that behaves like a kill)."""


def state_path(run_dir: Path, rank: int, world: int) -> Path:
    """``eval_state.pt`` (one process) or ``eval_state.rank<rank>.pt`` (torchrun) in ``run_dir``."""
    return run_dir / ("eval_state.pt" if world == 1 else f"eval_state.rank{rank}.pt")


def _drop_nulls(node: Any) -> Any:
    """The config without null leaves: a key added later with a null default (= absent) keeps the fingerprint."""
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    return node


def config_fingerprint(resolved: Mapping, world: int) -> str:
    """sha256 of the resolved config without RESULT_NEUTRAL_KEYS and null leaves, and of the number of
    processes."""
    plain = _drop_nulls(json.loads(json.dumps(resolved, default=str)))
    for key in RESULT_NEUTRAL_KEYS:
        *parents, leaf = key.split(".")
        node = plain
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    text = json.dumps({"config": plain, "world_size": world}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of the ANN's parameters and buffers (the checkpoint's content, whatever its path)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


STATE_KEYS = ("batches_done", "next_batch", "rank", "world_size", "fingerprint", "spike_stats", "accuracy",
              "ann_counts")


def load_eval_state(path: Path, fingerprint: dict, run_dir: Path, world: int,
                    device: torch.device) -> dict | None:
    """The state at ``path`` checked against ``fingerprint``; None (start at batch 0) if absent.

    A state of another config, checkpoint or number of processes, and a file that is not a
    complete state, raise UserError.
    """
    if not path.is_file():
        others = sorted(p.name for p in run_dir.glob("eval_state*.pt"))
        if others and not any(state_path(run_dir, r, world).is_file() for r in range(world)):
            raise UserError(f"resume=true: {run_dir} holds {others}, written by a different number of "
                            f"processes than world_size={world}; resume with the same number")
        log.debug("resume=true: %s holds no %s yet: simulating from the first batch", run_dir, path.name)
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, not a torch file, foreign objects
        raise UserError(f"resume=true: {path} is not a readable evaluation state ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); delete it to start over") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise UserError(f"resume=true: {path} is not an evaluation state of convert_eval.py (keys "
                        f"{sorted(state) if isinstance(state, dict) else type(state).__name__}); delete it to start over")
    for key, what in (("config", "the resolved config (or number of processes)"), ("weights", "the ANN weights")):
        if state["fingerprint"].get(key) != fingerprint[key]:
            raise UserError(f"resume=true: {path} was written by a run whose {what} differ from this run's; "
                            f"resume with the original overrides, or delete {path.name} to start over")
    return state


# ----------------------------------------------------------------------------- stage: prepare

@dataclass
class Prepared:
    """Everything the later stages need, built before any simulation."""

    cfg: EvalConfig
    ccfg: ConversionConfig
    resolved: dict                       # the composed config, resolved: what is recorded
    run_dir: Path
    env: DistEnv
    device: torch.device
    ckpt_path: Path
    bundle: Any
    model: nn.Module                     # the ANN, eval mode, on device
    spec: dict                           # what the model was built from (msat.models.build)
    snn: Any
    calib: list                          # the calibration batches, on device
    ckpt_sha256: str = ""                # of the checkpoint file read: ties the result to its weights
    train_run: dict = dataclasses.field(default_factory=dict)   # the training run: dir, seed, epoch, its test acc
    steps: list = dataclasses.field(default_factory=list)       # the reported steps (report_steps)


def calibration_batches(calib: Any, bundle: Any, seed: int) -> list[torch.Tensor]:
    """``calib.batches`` batches of ``calib.batch_size`` training images (``calib.shuffle``: the seeded
    loader's order); their transform was set when the data was built (``calib.transform``)."""
    loader = build_loader(bundle.calib, batch_size=calib.batch_size, shuffle=calib.shuffle, seed=seed)
    out = []
    for x, _ in loader:
        out.append(x)
        if len(out) == calib.batches:
            break
    return out


def checkpoint_path(ecfg: EvalConfig, resolved: Mapping) -> Path:
    """The checkpoint the run converts: ``ckpt``, or train_ann.py's default path for the dataset and model."""
    return Path(ecfg.ckpt) if ecfg.ckpt else default_ckpt_path(resolved)


def prepare(ecfg: EvalConfig, ccfg: ConversionConfig, resolved: dict, run_dir: Path, env: DistEnv,
            device: torch.device) -> Prepared:
    """Checkpoint, data, the ANN (rebuilt from the checkpoint's spec), calibration batches, conversion."""
    seed_everything(ecfg.seed)
    if device.type == "cpu" and ecfg.sim.tune_malloc:
        tune_cpu_allocator()          # the command line owns its process (a library caller opts in)
    ckpt_path = checkpoint_path(ecfg, resolved)
    ckpt = load_checkpoint(ckpt_path, dataset=ecfg.dataset["name"], model=ecfg.model.name)
    ckpt_sha = file_sha256(ckpt_path)
    train_run = {k: ckpt.get(k) for k in ("run_dir", "seed", "epoch", "test_acc")} if "model_spec" in ckpt else {}
    bundle = build_data(ecfg.dataset, artifacts=ckpt.get("artifacts") or None, calib_transform=ccfg.calib.transform)
    check_shards(len(bundle.test), ecfg.sim.batch_size, env.world_size)
    model, spec = build_model(ecfg.model, bundle.num_classes, bundle.model_kwargs, ckpt)
    load_model_weights(model, ckpt)
    check_input(model, bundle.test[0][0].unsqueeze(0), spec, bundle.name)
    model = model.to(device).eval()
    calib = [x.to(device) for x in calibration_batches(ccfg.calib, bundle, ecfg.seed)]
    snn = convert(model, calib, ccfg).to(device).eval()
    return Prepared(ecfg, ccfg, resolved, run_dir, env, device, ckpt_path, bundle, model, spec, snn, calib,
                    ckpt_sha, train_run, report_steps(ecfg.T, ecfg.report_T))


# ----------------------------------------------------------------------------- stage: simulate

@dataclass
class Counts:
    """The summed outcome of simulating the split (integer counts, so shards and resumes add up)."""

    stats: Any                           # msat.measure.SpikeStats
    accs: Any                            # msat.measure.AccuracyCurve
    ann_correct: int
    total: int
    sim_seconds: float
    resumed_images: int


class EvalState:
    """This rank's periodic state (``eval_state[.rankN].pt`` in the run directory): the raw counts of the
    batches done so far, saved every ``sim.checkpoint_every`` batches and on a stop signal (:meth:`save`),
    continued by ``resume=true`` (:meth:`resume`). Its fingerprint ties it to the config and the ANN weights."""

    def __init__(self, prep: Prepared, stats: SpikeStats, accs: AccuracyCurve, ann_counts: torch.Tensor):
        self.prep, self.stats, self.accs, self.ann_counts = prep, stats, accs, ann_counts
        self.rank, self.world = prep.env.rank, prep.env.world_size
        self.path = state_path(prep.run_dir, self.rank, self.world)
        self.fingerprint = {"config": config_fingerprint(prep.resolved, self.world),
                            "weights": weights_fingerprint(prep.model)}

    def resume(self) -> int:
        """Load the state into the counts; returns the batches of this rank it holds (0: none yet)."""
        state = load_eval_state(self.path, self.fingerprint, self.prep.run_dir, self.world, self.prep.device)
        if state is None:
            return 0
        start = int(state["batches_done"])
        self.stats.load_state_tensors(state["spike_stats"])
        self.accs.load_state_tensors(state["accuracy"])
        self.ann_counts.copy_(state["ann_counts"])
        log.info("resume: %s holds %d batches of rank %d; continuing at batch %d", self.path, start, self.rank,
                 state["next_batch"])
        return start

    def save(self, done: int, next_batch: int) -> None:
        """The counts after ``done`` batches of this rank, ``next_batch`` the split's batch it continues at."""
        atomic_torch_save({"batches_done": done, "next_batch": next_batch, "rank": self.rank,
                           "world_size": self.world, "fingerprint": self.fingerprint,
                           "spike_stats": {k: v.cpu() for k, v in self.stats.state_tensors().items()},
                           "accuracy": {k: v.cpu() for k, v in self.accs.state_tensors().items()},
                           "ann_counts": self.ann_counts.cpu()}, self.path)

    def after_batch(self, i: int, done: int, batch: int, signals: StopSignals) -> None:
        """After this process's ``i``-th batch (``done`` of this rank in all, ``batch`` of the split): save every
        ``sim.checkpoint_every`` batches; on a stop signal save and raise ``Interrupted`` with the resume line;
        ``sim.stop_after_batches`` raises ``StopRequested``."""
        sim = self.prep.cfg.sim
        if (sim.checkpoint_every and done % sim.checkpoint_every == 0) or signals.requested:
            self.save(done, batch + self.world)
        if signals.requested:
            cmd = resume_command("resume=true", f"hydra.run.dir={self.prep.run_dir}")
            raise Interrupted(f"{signal.Signals(signals.requested).name}: stopped after {done} test "
                              f"batches of rank {self.rank}, state saved to {self.path}; resume with: {cmd}",
                              signals.requested)
        if sim.stop_after_batches is not None and i >= sim.stop_after_batches:
            raise StopRequested(f"sim.stop_after_batches={sim.stop_after_batches}: stopped after {i} batches of "
                                f"rank {self.rank}")


class SplitProgress:
    """Progress over the test split on rank 0 (``sim.progress``): a bar on a terminal, otherwise a log line every
    10 %; ``done``: images already counted (a resumed run)."""

    def __init__(self, prep: Prepared, done: int):
        n, T, main = len(prep.bundle.test), prep.cfg.T, prep.env.rank == 0 and prep.cfg.sim.progress
        self.bar = self.plog = None
        if main and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=n, initial=min(done, n), desc=f"simulate T={T}", unit="img", dynamic_ncols=True)
        elif main:                                                   # no terminal: a log line every 10 %
            self.plog = ProgressLog(n, f"simulate T={T}", "images", done=min(done, n), logger=log)

    def update(self, images: int) -> None:
        if self.bar is not None:
            self.bar.update(images)
        elif self.plog is not None:
            self.plog.update(images)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def simulate_batch(prep: Prepared, x: torch.Tensor, y: torch.Tensor, b: int, gen: torch.Generator,
                   stats: SpikeStats, accs: AccuracyCurve, ann_counts: torch.Tensor) -> None:
    """The split's batch ``b``: the ANN's hits counted, then the SNN simulated to T into the observers (its SC
    draws seeded by the run's seed and ``b``, so they are the same under sharding)."""
    cfg, sim = prep.cfg, prep.cfg.sim
    x, y = x.to(prep.device), y.to(prep.device)
    ann_hit = prep.model(x).argmax(-1) == y
    ann_counts[0] += ann_hit.sum()
    ann_counts[1] += y.shape[0]
    gen.manual_seed(cfg.seed * 1_000_003 + b)            # per batch: identical under sharding
    accs.set_labels(y, torch.arange(b * sim.batch_size, b * sim.batch_size + y.shape[0]))
    accs.record_ann(ann_hit)
    simulate(prep.snn, x, cfg.T, chunk=sim.chunk, generator=gen, observers=(stats, accs), return_output=False,
             options=sim)


def simulate_split(prep: Prepared, signals: StopSignals | None = None) -> Counts:
    """Simulate this rank's test batches to T (resuming from a state when asked), then sum over ranks.

    ``signals``: after SIGINT / SIGTERM the state is saved at the next batch boundary and ``Interrupted``
    says how to resume."""
    env, device = prep.env, prep.device
    stats = SpikeStats()
    accs = AccuracyCurve(record_steps=prep.steps, n_images=len(prep.bundle.test))
    ann_counts = torch.zeros(2, dtype=torch.int64, device=device)   # correct, total (device: NCCL reduces)
    state = EvalState(prep, stats, accs, ann_counts)
    start = state.resume() if prep.cfg.resume else 0                 # batches of this rank in the state
    resumed = torch.tensor([int(ann_counts[1])], device=device)
    loader, batch_ids = shard_loader(prep.bundle.test, prep.cfg.sim.batch_size, env.rank, env.world_size,
                                     start=start)
    gen = torch.Generator(device=device)
    progress = SplitProgress(prep, int(ann_counts[1]) * env.world_size)
    t_sim = time.perf_counter()
    signals = signals or StopSignals()
    with torch.no_grad():
        for i, (b, (x, y)) in enumerate(zip(batch_ids, loader), start=1):
            simulate_batch(prep, x, y, b, gen, stats, accs, ann_counts)
            progress.update(y.shape[0] * env.world_size)
            state.after_batch(i, start + i, b, signals)
    progress.close()
    sim_seconds = time.perf_counter() - t_sim
    all_reduce_sum([ann_counts, resumed])
    stats.all_reduce()
    accs.all_reduce()
    return Counts(stats, accs, int(ann_counts[0]), int(ann_counts[1]), sim_seconds, int(resumed))


# ----------------------------------------------------------------------------- stage: summarize

def steps_to_lossless(correct: list[int], ann_correct: int, total: int, tol: float = 0.0) -> int | None:
    """First t (1-based) with ``acc[t] >= ann_acc - tol``, compared on integer counts; None if never."""
    need = ann_correct - tol * total
    for t, c in enumerate(correct, start=1):
        if c >= need - 1e-9:
            return t
    return None


def _scale_value(s: Any) -> float:
    """A layer scale as one number (the mean of a per-channel scale)."""
    return float(s.float().mean()) if isinstance(s, torch.Tensor) else float(s)


def method_record(snn: Any) -> dict:
    """What metrics.json records of the method: name, label, parameters, ANN, cost, the full conversion config."""
    m = snn.method
    return {"name": m.name, "label": m.describe(), "params": dataclasses.asdict(m.params), "ann": snn.ann,
            "dynamics": m.dynamics, "presim_steps": m.presim_steps(), "cost": snn.cost.as_dict(),
            "conversion": dataclasses.asdict(snn.cfg)}


def layer_rows(snn: Any, stats: SpikeStats, t_stat: int, T: int) -> list[dict]:
    """One row per spiking layer: its scale, firing rate at T, negative spikes, SIN ratio, q and ANS at
    ``t_stat``, the SC probability."""
    at_e, at_T = stats.at(t_stat), stats.at(T)
    scales, sc_p = snn.scales, snn.sc.p
    negative = stats.negative_spikes()
    return [{"name": n, "scale": _scale_value(scales[n]), "firing_rate": at_T[n]["firing_rate"],
             "negative_spikes": negative.get(n, 0),
             "sin_ratio": at_e[n]["sin_ratio"], "q": at_e[n]["q"], "ans": at_e[n]["ans"], "p": sc_p.get(n)}
            for n, _ in snn.neuron_layers()]


def energy_records(prep: Prepared, stats: SpikeStats) -> tuple[dict, dict]:
    """The energy report at T (with the mean firing rate) and, at every reported step, its ratio and rate."""
    macs = layer_macs(prep.model, prep.calib[0][:1])
    neurons, rates = stats.neurons_per_sample(), stats.mean_firing_rate()
    energy = energy_report(prep.snn, macs, stats.mean_spike_count(), neurons=neurons)
    energy["mean_firing_rate"] = rates[-1]
    energy_at = {str(t): {"ratio": energy_report(prep.snn, macs, stats.mean_spike_count(t), neurons=neurons)["ratio"],
                          "mean_firing_rate": rates[t - 1]} for t in prep.steps}
    return energy, energy_at


def summarize(prep: Prepared, counts: Counts, t_start: float) -> dict:
    """The metrics dict of the run (the schema of ``metrics.json``)."""
    cfg, snn = prep.cfg, prep.snn
    T, total, ann_correct = cfg.T, counts.total, counts.ann_correct
    correct = counts.accs.correct.cpu().tolist()
    acc = [c / total for c in correct]
    E = prep.ccfg.sc.E
    t_stat = min(E, T) if E > 0 else T
    curves = counts.stats.curves()
    names = [n for n, _ in snn.neuron_layers()]
    energy, energy_at = energy_records(prep, counts.stats)
    metrics = {
        "name": cfg.name,
        "method": method_record(snn),
        "dataset": cfg.dataset["name"],
        "model": prep.spec["name"],
        "ann_acc": ann_correct / total,
        "acc": acc,
        "acc_at": {str(t): acc[t - 1] for t in prep.steps},
        "steps_to_lossless": steps_to_lossless(correct, ann_correct, total, cfg.lossless_tol),
        "lossless_tol": cfg.lossless_tol,
        "counts": {"ann_correct": ann_correct, "correct": correct, "total": total},
        "per_image": counts.accs.per_image(),
        "stats_t": t_stat,
        "layers": layer_rows(snn, counts.stats, t_stat, T),
        "sin_curve": {n: curves[n]["sin_ratio"] for n in names},
        "firing_curve": {n: curves[n]["firing_rate"] for n in names},
        "negative_spikes": sum(counts.stats.negative_spikes().values()),
        "energy": energy,
        "energy_at": energy_at,
        "config": prep.resolved,
        "ckpt": str(prep.ckpt_path),
        "ckpt_sha256": prep.ckpt_sha256,
        "train_run": prep.train_run,
        "model_spec": prep.spec,
        "timing": {"seconds": counts.sim_seconds, "total_seconds": time.perf_counter() - t_start, "images": total,
                   "steps": T, "image_steps_per_s": (total - counts.resumed_images) * T / max(counts.sim_seconds, 1e-9),
                   "world_size": prep.env.world_size, "resumed_images": counts.resumed_images},
        "versions": versions(),
    }
    if cfg.objective_T is not None:
        metrics["objective"] = acc[cfg.objective_T - 1]
    return metrics


# ----------------------------------------------------------------------------- stage: write

def log_run(rl: Any, metrics: dict, steps: list[int]) -> None:
    """The accuracy curve by step, the layer and energy tables and the summary, to the run logger."""
    e = metrics["energy"]
    for t, a in enumerate(metrics["acc"], start=1):
        rl.log({"acc": a, "loss_vs_ann": metrics["ann_acc"] - a}, step=t)
    rl.log_table("layers", LAYER_COLUMNS, [[r[c] for c in LAYER_COLUMNS] for r in metrics["layers"]])
    rl.log_table("energy", ("layer", "op_ann", "op_snn"), [[n, e["op_ann"][n], e["op_snn"][n]] for n in e["op_ann"]])
    rl.log_summary({"method": metrics["method"]["name"], "ann_acc": metrics["ann_acc"],
                    "steps_to_lossless": metrics["steps_to_lossless"], "energy_ratio": e["ratio"],
                    "mean_firing_rate": e["mean_firing_rate"], **{f"acc@T{t}": metrics["acc"][t - 1] for t in steps}})


def write_files(st: Staging, metrics: dict, prep: Prepared, rl: Any) -> None:
    """The files of the run's set, into the staging directory: the accuracy curve, the config, the logger's
    local files, the plots."""
    rows = "".join(f"{t},{a!r}\n" for t, a in enumerate(metrics["acc"], start=1))
    atomic_write_text(st.path("acc_curve.csv"), "t,acc\n" + rows)
    write_config(st.path("config.yaml"), prep.resolved)
    rl.write_local(st.dir)
    reporting.plot_acc_vs_T(metrics, st.path("acc_vs_T.png"))
    reporting.plot_layer_curves(metrics["sin_curve"], st.path("sin_ratio.png"), "SIN ratio")
    reporting.plot_firing_rate(metrics["layers"], st.path("firing_rate.png"))


def write(metrics: dict, prep: Prepared, rl: Any) -> dict:
    """Commit the run's files as one set (staged, then moved in, ``metrics.json`` last); returns it."""
    log_run(rl, metrics, prep.steps)
    out = commit_set(prep.run_dir, metrics, lambda st: write_files(st, metrics, prep, rl),
                     expected_bytes=len(json.dumps(metrics, default=str)))
    for r in range(prep.env.world_size):              # the run is complete: its states are stale
        state_path(prep.run_dir, r, prep.env.world_size).unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------- the run

def default_run_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.paths.output_dir) / "convert_eval" / cfg.name / run_id()


def reusable(run_dir: Path, resolved: Mapping, ckpt_path: Path) -> dict | None:
    """``skip_done``: the committed result in ``run_dir`` if it was computed from the same config and the
    same checkpoint content (sha256; a retrained checkpoint at the same path is not the same ANN)."""
    if not (run_dir / "metrics.json").is_file() or not ckpt_path.is_file():
        return None
    try:
        done = load_run(run_dir)
    except UserError as e:            # unsigned, altered or incomplete: computed again, never published
        log.warning("skip_done: the result in %s cannot be verified (%s); computing it again", run_dir, e)
        return None
    # the numbers do not depend on result-neutral keys, nor on the number of processes
    if config_fingerprint(done.get("config") or {}, 1) != config_fingerprint(resolved, 1):
        log.info("skip_done: the result in %s was computed with another config; computing it again", run_dir)
        return None
    sha = file_sha256(ckpt_path)
    if done.get("ckpt_sha256") != sha:
        log.info("skip_done: the result in %s was computed from another checkpoint (sha256 %s, %s is now %s); "
                 "computing it again", run_dir, str(done.get("ckpt_sha256"))[:12], ckpt_path, sha[:12])
        return None
    return done


def start_line(ecfg: EvalConfig, ccfg: ConversionConfig, run_dir: Path) -> str:
    """The line a run starts with: what it converts and simulates, and where its files go."""
    return (f"convert_eval: method {ccfg.method.name}, model {ecfg.model.name}, dataset {ecfg.dataset['name']}, "
            f"T={ecfg.T}; run dir {run_dir}")


def end_line(metrics: Mapping, run_dir: Path) -> str:
    """The line a run ends with: ANN accuracy, the SNN's at the last T, steps to lossless, where the files are."""
    acc, stl = metrics["acc"], metrics["steps_to_lossless"]
    return (f"convert_eval: ANN {100 * metrics['ann_acc']:.2f} %, SNN {100 * acc[-1]:.2f} % at T={len(acc)}, "
            f"lossless {f'from t={stl}' if stl is not None else 'never (up to T)'}; files in {run_dir} "
            "(metrics.json, acc_curve.csv, plots)")


def run(cfg: Any, run_dir: str | os.PathLike | None = None) -> dict:
    """Convert, simulate and measure; commit the run directory; return the metrics dict.

    ``run_dir``: default the Hydra job directory, outside Hydra
    ``${paths.output_dir}/convert_eval/<name>/<run id>``. The run is held by :func:`msat.runs.run_in_dir`
    (its lock, signals, the logger and the process group closed on every path).
    """
    t_start = time.perf_counter()
    ecfg, ccfg = check_config(cfg)
    resolved = dict(to_plain(cfg))
    run_dir = Path(run_dir) if run_dir is not None else (hydra_run_dir() or default_run_dir(ecfg))
    ckpt = checkpoint_path(ecfg, resolved)
    wait_for_checkpoint(ckpt)                              # never the weights of a training still running
    if ecfg.skip_done and (done := reusable(run_dir, resolved, ckpt)) is not None:
        log.info("skip_done: %s already holds this run's metrics.json", run_dir)
        return done
    with run_in_dir(run_dir, ecfg.device, announce=start_line(ecfg, ccfg, run_dir)) as job:
        prep = prepare(ecfg, ccfg, resolved, run_dir, job.env, job.device)
        rl = job.open_logger(ecfg.logger, resolved, local=False)
        counts = simulate_split(prep, job.signals)
        metrics = summarize(prep, counts, t_start)
        if job.env.is_main:
            metrics = write(metrics, prep, rl)
    if job.env.is_main:                                   # last: after the logger's closing lines
        print(reporting.run_summary(metrics, prep.steps), flush=True)
        print(end_line(metrics, run_dir), flush=True)
    return metrics


__all__ = ["run", "prepare", "simulate_split", "summarize", "write", "check_config", "report_steps",
           "Prepared", "Counts", "StopRequested", "EvalState"]
