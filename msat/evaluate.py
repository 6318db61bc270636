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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from .checkpoint import default_ckpt_path, load_checkpoint, load_model_weights
from .config import ConversionConfig, EvalConfig, conversion_config, from_mapping
from .runs import RunLock, Staging, load_run
from .training import ProgressLog
from .utils import (DistEnv, file_sha256, Interrupted, StopSignals, UserError, all_reduce_sum, atomic_torch_save,
                    atomic_write_text, hydra_run_dir, resume_command, seed_everything,
                    setup_distributed, to_plain, versions)

log = logging.getLogger(__name__)

DEFAULT_REPORT_T = (1, 4, 8, 16, 32, 64, 128, 256)
LAYER_COLUMNS = ("name", "scale", "firing_rate", "sin_ratio", "q", "ans", "p")


# ----------------------------------------------------------------------------- config checks

def report_steps(T: int, report_T: Any = None) -> list[int]:
    """The steps shown in summaries: ``report_T`` (checked against T) or 1, 4, 8, ..., 256 up to T, plus T."""
    if report_T is None:
        steps = [t for t in DEFAULT_REPORT_T if t <= T]
        return steps if T in steps else steps + [T]
    steps = sorted({int(t) for t in report_T})
    bad = [t for t in steps if not 1 <= t <= T]
    if bad:
        raise UserError(f"report_T {bad} outside 1..T={T}: every reported T must be in 1..T")
    return steps


def check_config(cfg: Any) -> tuple[EvalConfig, ConversionConfig]:
    """Every check that can fail before compute: keys, types and ranges of every group (one
    validator), names, the method and its conversion config, SC E vs T, the model's arguments (built
    on the meta device) and the memory the per-step curves need."""
    from .data import dataset_config
    from .models.build import activation_sites, model_spec

    ecfg = from_mapping(EvalConfig, cfg)
    ds = dataset_config(ecfg.dataset)
    conv = conversion_config(to_plain(cfg))
    if conv.sc.enabled and not 1 <= conv.sc.E <= ecfg.T:
        raise UserError(f"spike confidence acts for t < sc.E={conv.sc.E}, beyond T={ecfg.T}: set 1 <= sc.E <= T "
                        "or a method without SC")
    layers = activation_sites(model_spec(to_plain(cfg)["model"]), ds["num_classes"])
    check_memory(ecfg.T, layers)
    return ecfg, conv


# bytes per time step and spiking layer that a run keeps: SpikeStats' four int64 counts, the four curves as
# Python floats, the two curves metrics.json holds, their JSON text (a generous bound)
BYTES_PER_STEP_AND_LAYER = 4 * 8 + 4 * 32 + 2 * 32 + 2 * 24


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(T: int, layers: int) -> None:
    """Refuse a T whose per-step curves cannot fit in memory (before any data is read)."""
    need = T * (16 + max(layers, 1) * BYTES_PER_STEP_AND_LAYER)
    avail = available_memory()
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
    conv: ConversionConfig
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


def calibration_batches(calib: Any, bundle: Any, seed: int) -> list[torch.Tensor]:
    """``calib.batches`` batches of ``calib.batch_size`` training images (``calib.shuffle``: the seeded
    loader's order); their transform was set when the data was built (``calib.transform``)."""
    from .data import build_loader

    loader = build_loader(bundle.calib, batch_size=calib.batch_size, shuffle=calib.shuffle, seed=seed)
    out = []
    for x, _ in loader:
        out.append(x)
        if len(out) == calib.batches:
            break
    return out


def prepare(ecfg: EvalConfig, conv: ConversionConfig, resolved: dict, run_dir: Path, env: DistEnv,
            device: torch.device) -> Prepared:
    """Checkpoint, data, the ANN (rebuilt from the checkpoint's spec), calibration batches, conversion."""
    import msat
    from .data import build_data
    from .models import build_model
    from .models.build import check_input

    seed_everything(ecfg.seed)
    if device.type == "cpu" and ecfg.sim.tune_malloc:
        from .simulation import tune_cpu_allocator

        tune_cpu_allocator()          # the command line owns its process (a library caller opts in)
    ckpt_path = Path(ecfg.ckpt) if ecfg.ckpt else default_ckpt_path(resolved)
    ckpt = load_checkpoint(ckpt_path, dataset=ecfg.dataset["name"], model=ecfg.model.name)
    ckpt_sha = file_sha256(ckpt_path)
    train_run = {k: ckpt.get(k) for k in ("run_dir", "seed", "epoch", "test_acc")} if "model_spec" in ckpt else {}
    bundle = build_data(ecfg.dataset, artifacts=ckpt.get("artifacts") or None, calib_transform=conv.calib.transform)
    check_shards(len(bundle.test), ecfg.sim.batch_size, env.world_size)
    model, spec = build_model(resolved["model"], bundle.num_classes, bundle.model_kwargs, ckpt)
    load_model_weights(model, ckpt)
    check_input(model, bundle.test[0][0].unsqueeze(0), spec, bundle.name)
    model = model.to(device).eval()
    calib = [x.to(device) for x in calibration_batches(conv.calib, bundle, ecfg.seed)]
    snn = msat.convert(model, calib, conv).to(device).eval()
    return Prepared(ecfg, conv, resolved, run_dir, env, device, ckpt_path, bundle, model, spec, snn, calib,
                    ckpt_sha, train_run)



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


def simulate_split(prep: Prepared, signals: StopSignals | None = None) -> Counts:
    """Simulate this rank's test batches to T (resuming from a state when asked), then sum over ranks.

    ``signals``: after SIGINT / SIGTERM the state is saved at the next batch boundary and ``Interrupted``
    says how to resume."""
    import msat
    from .measure import AccuracyCurve, SpikeStats

    cfg, sim, env, device = prep.cfg, prep.cfg.sim, prep.env, prep.device
    rank, world = env.rank, env.world_size
    stats = SpikeStats()
    accs = AccuracyCurve(record_steps=report_steps(cfg.T, cfg.report_T), n_images=len(prep.bundle.test))
    ann_counts = torch.zeros(2, dtype=torch.int64, device=device)   # correct, total (device: NCCL reduces)
    every, stop = sim.checkpoint_every, sim.stop_after_batches
    fingerprint = {"config": config_fingerprint(prep.resolved, world), "weights": weights_fingerprint(prep.model)}
    spath, start = state_path(prep.run_dir, rank, world), 0          # start: batches of this rank in the state
    state = load_eval_state(spath, fingerprint, prep.run_dir, world, device) if cfg.resume else None
    if state is not None:
        start = int(state["batches_done"])
        stats.load_state_tensors(state["spike_stats"])
        accs.load_state_tensors(state["accuracy"])
        ann_counts.copy_(state["ann_counts"])
        log.info("resume: %s holds %d batches of rank %d; continuing at batch %d", spath, start, rank,
                 state["next_batch"])
    resumed = torch.tensor([int(ann_counts[1])], device=device)
    loader, batch_ids = shard_loader(prep.bundle.test, sim.batch_size, rank, world, start=start)
    gen = torch.Generator(device=device)
    bar = plog = None
    n = len(prep.bundle.test)
    if rank == 0 and sim.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=n, initial=min(int(ann_counts[1]) * world, n), desc=f"simulate T={cfg.T}", unit="img",
                   dynamic_ncols=True)
    elif rank == 0 and sim.progress:                                 # no terminal: a log line every 10 %
        plog = ProgressLog(n, f"simulate T={cfg.T}", "images", done=min(int(ann_counts[1]) * world, n), logger=log)
    def save(done: int, next_batch: int) -> None:
        atomic_torch_save({"batches_done": done, "next_batch": next_batch, "rank": rank, "world_size": world,
                           "fingerprint": fingerprint,
                           "spike_stats": {k: v.cpu() for k, v in stats.state_tensors().items()},
                           "accuracy": {k: v.cpu() for k, v in accs.state_tensors().items()},
                           "ann_counts": ann_counts.cpu()}, spath)

    t_sim = time.perf_counter()
    signals = signals or StopSignals()
    with torch.no_grad():
        for i, (b, (x, y)) in enumerate(zip(batch_ids, loader), start=1):
            x, y = x.to(device), y.to(device)
            ann_hit = prep.model(x).argmax(-1) == y
            ann_counts[0] += ann_hit.sum()
            ann_counts[1] += y.shape[0]
            gen.manual_seed(cfg.seed * 1_000_003 + b)            # per batch: identical under sharding
            accs.set_labels(y, torch.arange(b * sim.batch_size, b * sim.batch_size + y.shape[0]))
            accs.record_ann(ann_hit)
            msat.simulate(prep.snn, x, cfg.T, chunk=sim.chunk, generator=gen, observers=(stats, accs),
                          return_output=False, fused=sim.fused, precision=sim.precision,
                          cuda_graphs=sim.cuda_graphs, channels_last=sim.channels_last, chunk_bytes=sim.chunk_bytes)
            if bar is not None:
                bar.update(y.shape[0] * world)
            elif plog is not None:
                plog.update(y.shape[0] * world)
            if (every and (start + i) % every == 0) or signals.requested:
                save(start + i, b + world)
            if signals.requested:
                cmd = resume_command("resume=true", f"hydra.run.dir={prep.run_dir}")
                raise Interrupted(f"{signal.Signals(signals.requested).name}: stopped after {start + i} test "
                                  f"batches of rank {rank}, state saved to {spath}; resume with: {cmd}",
                                  signals.requested)
            if stop is not None and i >= stop:
                raise StopRequested(f"sim.stop_after_batches={stop}: stopped after {i} batches of rank {rank}")
    if bar is not None:
        bar.close()
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


def summarize(prep: Prepared, counts: Counts, t_start: float) -> dict:
    """The metrics dict of the run (the schema of ``metrics.json``)."""
    from .measure import energy_report, layer_macs

    cfg, snn = prep.cfg, prep.snn
    T, total, ann_correct = cfg.T, counts.total, counts.ann_correct
    steps = report_steps(T, cfg.report_T)
    correct = counts.accs.correct.cpu().tolist()
    acc = [c / total for c in correct]
    E = prep.conv.sc.E
    t_stat = min(E, T) if E > 0 else T
    stats = counts.stats
    curves = stats.curves()
    at_e, at_T = stats.at(t_stat), stats.at(T)
    names = [n for n, _ in snn.neuron_layers()]
    scales, sc_p = snn.scales, snn.sc.p
    negative = stats.negative_spikes()
    layers = [{"name": n, "scale": _scale_value(scales[n]), "firing_rate": at_T[n]["firing_rate"],
               "negative_spikes": negative.get(n, 0),
               "sin_ratio": at_e[n]["sin_ratio"], "q": at_e[n]["q"], "ans": at_e[n]["ans"], "p": sc_p.get(n)}
              for n in names]
    macs = layer_macs(prep.model, prep.calib[0][:1])
    neurons, rates = stats.neurons_per_sample(), stats.mean_firing_rate()
    energy = energy_report(snn, macs, stats.mean_spike_count(), neurons=neurons)
    energy["mean_firing_rate"] = rates[-1]
    energy_at = {str(t): {"ratio": energy_report(snn, macs, stats.mean_spike_count(t), neurons=neurons)["ratio"],
                          "mean_firing_rate": rates[t - 1]} for t in steps}
    metrics = {
        "name": cfg.name,
        "method": method_record(snn),
        "dataset": cfg.dataset["name"],
        "model": prep.spec["name"],
        "ann_acc": ann_correct / total,
        "acc": acc,
        "acc_at": {str(t): acc[t - 1] for t in steps},
        "steps_to_lossless": steps_to_lossless(correct, ann_correct, total, cfg.lossless_tol),
        "lossless_tol": cfg.lossless_tol,
        "counts": {"ann_correct": ann_correct, "correct": correct, "total": total},
        "per_image": counts.accs.per_image(),
        "stats_t": t_stat,
        "layers": layers,
        "sin_curve": {n: curves[n]["sin_ratio"] for n in names},
        "firing_curve": {n: curves[n]["firing_rate"] for n in names},
        "negative_spikes": sum(negative.values()),
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


def write(metrics: dict, prep: Prepared, rl: Any) -> dict:
    """Commit the run's files as one set (staged, then moved in, ``metrics.json`` last); returns it."""
    from . import reporting
    from .training import write_config

    steps = report_steps(prep.cfg.T, prep.cfg.report_T)
    log_run(rl, metrics, steps)
    with Staging(prep.run_dir, expected_bytes=len(json.dumps(metrics, default=str))) as st:
        rows = "".join(f"{t},{a!r}\n" for t, a in enumerate(metrics["acc"], start=1))
        atomic_write_text(st.path("acc_curve.csv"), "t,acc\n" + rows)
        write_config(st.path("config.yaml"), prep.resolved)
        rl.write_local(st.dir)
        reporting.plot_acc_vs_T(metrics, st.path("acc_vs_T.png"))
        reporting.plot_layer_curves(metrics["sin_curve"], st.path("sin_ratio.png"), "SIN ratio")
        reporting.plot_firing_rate(metrics["layers"], st.path("firing_rate.png"))
        out = st.commit(metrics)
    for r in range(prep.env.world_size):              # the run is complete: its states are stale
        state_path(prep.run_dir, r, prep.env.world_size).unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------- the run

def default_run_dir(cfg: EvalConfig) -> Path:
    from .runs import run_id

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
        return None
    return done if done.get("ckpt_sha256") == file_sha256(ckpt_path) else None


def start_line(ecfg: EvalConfig, conv: ConversionConfig, run_dir: Path) -> str:
    """The line a run starts with: what it converts and simulates, and where its files go."""
    return (f"convert_eval: method {conv.method.name}, model {ecfg.model.name}, dataset {ecfg.dataset['name']}, "
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
    ``${paths.output_dir}/convert_eval/<name>/<run id>``.
    """
    from . import reporting
    from .loggers import RunLogger

    t_start = time.perf_counter()
    ecfg, conv = check_config(cfg)
    resolved = dict(to_plain(cfg))
    run_dir = Path(run_dir) if run_dir is not None else (hydra_run_dir() or default_run_dir(ecfg))
    ckpt_path = Path(ecfg.ckpt) if ecfg.ckpt else default_ckpt_path(resolved)
    if ecfg.skip_done and (done := reusable(run_dir, resolved, ckpt_path)) is not None:
        log.info("skip_done: %s already holds this run's metrics.json", run_dir)
        return done
    env, device = setup_distributed(ecfg.device)
    if env.is_main:
        print(start_line(ecfg, conv, run_dir), flush=True)
    rl = None
    try:
        with RunLock(run_dir) if env.is_main else nullcontext(), StopSignals() as signals:
            prep = prepare(ecfg, conv, resolved, run_dir, env, device)
            rl = RunLogger(ecfg.logger, run_dir, resolved, enabled=env.is_main, local=False)
            counts = simulate_split(prep, signals)
            metrics = summarize(prep, counts, t_start)
            if env.is_main:
                metrics = write(metrics, prep, rl)
                print(reporting.run_summary(metrics, report_steps(ecfg.T, ecfg.report_T)), flush=True)
                print(end_line(metrics, run_dir), flush=True)
        if rl is not None:
            rl.finish(exit_code=0)
        return metrics
    finally:
        if rl is not None:
            rl.finish(exit_code=1)                    # no-op after a clean finish
        if env.owns_group:
            dist.destroy_process_group()


__all__ = ["run", "prepare", "simulate_split", "summarize", "write", "check_config", "report_steps",
           "Prepared", "Counts", "StopRequested"]
