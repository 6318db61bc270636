"""``run(cfg)``: the pure function behind ``convert_eval.py``.

Load the trained ANN, evaluate it, convert it (calibration on one batch of training images),
derive the spike-confidence ``p`` when SC is on, simulate the whole test split to ``T`` once,
and write ``metrics.json``, ``acc_curve.csv``, ``layers.csv`` and three plots into the run
directory (plus W&B, offline by default). Under ``torchrun`` each rank simulates every
``world_size``-th test batch and the integer counts are summed, so the numbers equal a
single-process run exactly.

Long runs checkpoint: every ``sim.checkpoint_every`` batches each rank writes its raw counts to
``eval_state[.rankN].pt`` in the run directory (atomically); ``resume=true`` in the same run
directory continues from the next batch and gives the numbers of an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from .checkpoint import default_ckpt_path, load_checkpoint, load_model_weights
from .config import conversion_config
from .utils import (UserError, atomic_torch_save, atomic_write_text, hydra_run_dir, seed_everything,
                    setup_distributed, to_plain, versions, write_json)

log = logging.getLogger(__name__)

DEFAULT_REPORT_T = (1, 4, 8, 16, 32, 64, 128, 256)
# calibration keys read here (loader side); the rest of ``calib`` goes to msat.convert
CALIB_LOADER_KEYS = ("batch_size", "transform", "shuffle")


# ----------------------------------------------------------------------------- config checks

def report_steps(T: int, report_T: Any = None) -> list[int]:
    """The steps shown in summaries: ``report_T`` (checked against T) or 1, 4, 8, ..., 256 up to T, plus T."""
    if report_T is None:
        steps = [t for t in DEFAULT_REPORT_T if t <= T]
        return steps if T in steps else steps + [T]
    steps = sorted({int(t) for t in report_T})
    bad = [t for t in steps if not 1 <= t <= T]
    if bad:
        raise UserError(f"report_T {bad} outside 1..T={T}: a reported T cannot exceed the simulated T")
    return steps


def check_config(cfg: Mapping) -> Any:
    """Every check that can fail before compute: T, report_T, names, SC vs T; returns the ConversionConfig."""
    from .data import list_datasets
    from .models import list_models

    T = cfg.get("T")
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise UserError(f"T must be a positive integer (number of time steps), got {T!r}")
    report_steps(T, cfg.get("report_T"))
    if cfg["dataset"]["name"] not in list_datasets():
        raise UserError(f"unknown dataset {cfg['dataset']['name']!r}; valid datasets: {', '.join(list_datasets())}")
    if cfg["model"]["name"] not in list_models():
        raise UserError(f"unknown model {cfg['model']['name']!r}; valid models: {', '.join(list_models())}")
    conv = conversion_config(conversion_cfg(cfg))
    if conv.sc.enabled and not 1 <= conv.sc.E <= T:
        raise UserError(f"spike confidence acts for t < sc.E={conv.sc.E}, beyond T={T}: set 1 <= sc.E <= T or sc=off")
    tol = float(cfg.get("lossless_tol", 0.0))
    if not 0.0 <= tol <= 1.0:
        raise UserError(f"lossless_tol is an accuracy difference in [0, 1], got {tol}")
    obj = cfg.get("objective_T")
    if obj is not None and not 1 <= int(obj) <= T:
        raise UserError(f"objective_T={obj} outside 1..T={T}")
    every, stop = cfg["sim"].get("checkpoint_every", 0), cfg["sim"].get("stop_after_batches")
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise UserError(f"sim.checkpoint_every is a number of batches >= 0 (0: never), got {every!r}")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < 1):
        raise UserError(f"sim.stop_after_batches is null or a number of batches >= 1, got {stop!r}")
    if not isinstance(cfg.get("resume", False), bool):
        raise UserError(f"resume is true or false, got {cfg.get('resume')!r}")
    return conv


def conversion_cfg(cfg: Mapping) -> dict:
    """The mapping ``msat.convert`` takes: groups neuron, calib (without the loader keys), sc, pool."""
    plain = dict(to_plain(cfg))
    calib = {k: v for k, v in dict(plain.get("calib") or {}).items() if k not in CALIB_LOADER_KEYS}
    return {"neuron": plain.get("neuron"), "calib": calib, "sc": plain.get("sc"), "pool": plain.get("pool")}


# ----------------------------------------------------------------------------- distributed

def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


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
RESULT_NEUTRAL_KEYS = ("resume", "skip_done", "logger", "paths.output_dir", "sim.progress", "sim.tune_malloc",
                       "sim.checkpoint_every", "sim.stop_after_batches")


class StopRequested(RuntimeError):
    """``sim.stop_after_batches`` ended the run early (a test hook that behaves like a kill)."""


def state_path(run_dir: Path, rank: int, world: int) -> Path:
    """``eval_state.pt`` (one process) or ``eval_state.rank<rank>.pt`` (torchrun) in ``run_dir``."""
    return run_dir / ("eval_state.pt" if world == 1 else f"eval_state.rank{rank}.pt")


def config_fingerprint(resolved: Mapping, world: int) -> str:
    """sha256 of the resolved config without RESULT_NEUTRAL_KEYS, and of the number of processes."""
    plain = json.loads(json.dumps(resolved, default=str))
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


def load_eval_state(path: Path, fingerprint: dict, run_dir: Path, world: int,
                    device: torch.device) -> dict | None:
    """The state at ``path`` checked against ``fingerprint``; None (start at batch 0) if absent.

    A state of another config, checkpoint or number of processes raises UserError.
    """
    if not path.is_file():
        others = sorted(p.name for p in run_dir.glob("eval_state*.pt"))
        if others and not any(state_path(run_dir, r, world).is_file() for r in range(world)):
            raise UserError(f"resume=true: {run_dir} holds {others}, written by a different number of "
                            f"processes than world_size={world}; resume with the same number")
        log.warning("resume=true but %s holds no %s: simulating from the first batch", run_dir, path.name)
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    for key, what in (("config", "the resolved config (or number of processes)"), ("weights", "the ANN weights")):
        if state["fingerprint"][key] != fingerprint[key]:
            raise UserError(f"resume=true: {path} was written by a run whose {what} differ from this run's; "
                            f"resume with the original overrides, or delete {path.name} to start over")
    return state


# ----------------------------------------------------------------------------- steps

def load_ann(cfg: Mapping, bundle: Any, ckpt: Mapping, device: torch.device) -> nn.Module:
    """The model of ``cfg.model`` with the checkpoint's weights, in eval mode on ``device``."""
    from .models import create_model

    kwargs = dict(cfg["model"].get("kwargs") or {})
    kwargs.update(bundle.model_kwargs)
    model = create_model(cfg["model"]["name"], num_classes=bundle.num_classes, **kwargs)
    load_model_weights(model, ckpt)
    return model.to(device).eval()


def calibration_batch(cfg: Mapping, bundle: Any, seed: int) -> torch.Tensor:
    """The first ``calib.batch_size`` images of the calibration split (``calib.shuffle``: the seeded loader's order)."""
    from .data import build_loader

    c = cfg["calib"]
    loader = build_loader(bundle.calib, batch_size=int(c["batch_size"]), shuffle=bool(c.get("shuffle", False)),
                          seed=seed)
    return next(iter(loader))[0]


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


def _data_cfg(cfg: Mapping) -> Any:
    """The dataset node, with the calibration transform set when the dataset has augmentations."""
    ds = OmegaConf.create(OmegaConf.to_container(cfg["dataset"], resolve=True)) if isinstance(cfg, DictConfig) \
        else dict(cfg["dataset"])
    transform = cfg["calib"].get("transform", "test")
    if "calib_transform" in ds:
        ds["calib_transform"] = transform
    return ds


# ----------------------------------------------------------------------------- the run

def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict:
    """Convert, simulate and measure; write the run directory; return the metrics dict.

    ``run_dir``: default the Hydra job directory, outside Hydra
    ``${paths.output_dir}/convert_eval/<name>/<timestamp>``.
    """
    import msat
    from . import reporting
    from .data import build_data
    from .measure import AccuracyCurve, SpikeStats, derive_sc_p, energy_report, layer_macs, resolve_sc_p

    t_start = time.perf_counter()
    conv = check_config(cfg)
    T = int(cfg["T"])
    steps = report_steps(T, cfg.get("report_T"))
    seed = int(cfg.get("seed", 0))
    resolved = dict(to_plain(cfg))
    if run_dir is None:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        run_dir = hydra_run_dir() or Path(str(cfg["paths"]["output_dir"])) / "convert_eval" / str(cfg.get("name")) / stamp
    run_dir = Path(run_dir)
    if cfg.get("skip_done") and (run_dir / "metrics.json").is_file():
        done = json.loads((run_dir / "metrics.json").read_text())
        # the numbers do not depend on result-neutral keys, nor on the number of processes
        if config_fingerprint(done.get("config") or {}, 1) == config_fingerprint(resolved, 1):
            log.info("skip_done: %s already holds this run's metrics.json", run_dir)
            return done

    env, device = setup_distributed(str(cfg.get("device", "auto")))
    rank, world, created_pg = env.rank, env.world_size, env.owns_group
    seed_everything(seed)
    sim = cfg["sim"]
    if device.type == "cpu" and bool(sim.get("tune_malloc", True)):
        from .simulation import tune_cpu_allocator

        tune_cpu_allocator()          # keep freed chunk buffers in the heap: ~15 % faster on CPU

    ckpt_path = Path(str(cfg["ckpt"])) if cfg.get("ckpt") else default_ckpt_path(cfg)
    ckpt = load_checkpoint(ckpt_path, dataset=cfg["dataset"]["name"], model=cfg["model"]["name"])
    bundle = build_data(_data_cfg(cfg), artifacts=ckpt.get("artifacts") or None)
    check_shards(len(bundle.test), int(sim["batch_size"]), world)
    model = load_ann(cfg, bundle, ckpt, device)

    x_cal = calibration_batch(cfg, bundle, seed).to(device)
    snn = msat.convert(model, x_cal, conversion_cfg(cfg)).to(device).eval()
    names = [n for n, _ in snn.neuron_layers()]
    sc_p: dict[str, float] = {}
    if conv.sc.enabled:
        derived = derive_sc_p(snn, x_cal, conv.sc.E, chunk=int(sim["chunk"])) if conv.sc.p is None else None
        sc_p = resolve_sc_p(conv.sc.p, snn.sc_layers(), derived)
        snn.set_sc_p(sc_p)

    stats, accs = SpikeStats(), AccuracyCurve()
    ann_counts = torch.zeros(2, dtype=torch.int64, device=device)   # correct, total (device: NCCL reduces)
    every, stop, resume = int(sim.get("checkpoint_every", 0)), sim.get("stop_after_batches"), cfg.get("resume")
    fingerprint = {"config": config_fingerprint(resolved, world), "weights": weights_fingerprint(model)} \
        if every or resume else None
    spath, start = state_path(run_dir, rank, world), 0          # start: batches of this rank in the state
    state = load_eval_state(spath, fingerprint, run_dir, world, device) if resume else None
    if state is not None:
        start = int(state["batches_done"])
        stats.load_state_tensors(state["spike_stats"])
        accs.load_state_tensors(state["accuracy"])
        ann_counts.copy_(state["ann_counts"])
        log.info("resume: %s holds %d batches of rank %d; continuing at batch %d", spath, start, rank,
                 state["next_batch"])
    resumed_images = torch.tensor([int(ann_counts[1])], device=device)
    loader, batch_ids = shard_loader(bundle.test, int(sim["batch_size"]), rank, world, start=start)
    gen = torch.Generator(device=device)
    bar = None
    if rank == 0 and bool(sim.get("progress", True)):
        from tqdm import tqdm

        bar = tqdm(total=len(bundle.test), initial=min(int(ann_counts[1]) * world, len(bundle.test)),
                   desc=f"simulate T={T}", unit="img", dynamic_ncols=True)
    t_sim = time.perf_counter()
    with torch.no_grad():
        for i, (b, (x, y)) in enumerate(zip(batch_ids, loader), start=1):
            x, y = x.to(device), y.to(device)
            ann_counts[0] += (model(x).argmax(-1) == y).sum()
            ann_counts[1] += y.shape[0]
            gen.manual_seed(seed * 1_000_003 + b)            # per batch: identical under sharding
            accs.set_labels(y)
            msat.simulate(snn, x, T, chunk=int(sim["chunk"]), generator=gen, observers=(stats, accs))
            if bar is not None:
                bar.update(y.shape[0] * world)
            if every and (start + i) % every == 0:
                atomic_torch_save({"batches_done": start + i, "next_batch": b + world, "rank": rank,
                                   "world_size": world, "fingerprint": fingerprint,
                                   "spike_stats": {k: v.cpu() for k, v in stats.state_tensors().items()},
                                   "accuracy": {k: v.cpu() for k, v in accs.state_tensors().items()},
                                   "ann_counts": ann_counts.cpu()}, spath)
            if stop is not None and i >= int(stop):
                raise StopRequested(f"sim.stop_after_batches={stop}: stopped after {i} batches of rank {rank}")
    if bar is not None:
        bar.close()
    sim_seconds = time.perf_counter() - t_sim
    _all_reduce(ann_counts)
    _all_reduce(resumed_images)
    stats.all_reduce()
    accs.all_reduce()
    if created_pg:
        dist.barrier()
        dist.destroy_process_group()

    total, ann_correct = int(ann_counts[1]), int(ann_counts[0])
    correct = accs.correct.cpu().tolist()
    acc = [c / total for c in correct]
    ann_acc = ann_correct / total
    tol = float(cfg.get("lossless_tol", 0.0))
    t_stat = min(conv.sc.E, T) if conv.sc.E > 0 else T
    curves = stats.curves()
    at_e, at_T = stats.at(t_stat), stats.at(T)
    scales = snn.scales
    layers = [{"name": n, "scale": _scale_value(scales[n]), "firing_rate": at_T[n]["firing_rate"],
               "sin_ratio": at_e[n]["sin_ratio"], "q": at_e[n]["q"], "ans": at_e[n]["ans"], "p": sc_p.get(n)}
              for n in names]
    macs = layer_macs(model, x_cal[:1])
    energy = energy_report(snn, macs, stats.mean_spike_count(), neurons=stats.neurons_per_sample())
    energy["mean_firing_rate"] = stats.mean_firing_rate()[-1]
    metrics = {
        "name": cfg.get("name"),
        "ann_acc": ann_acc,
        "acc": acc,
        "acc_at": {str(t): acc[t - 1] for t in steps},
        "steps_to_lossless": steps_to_lossless(correct, ann_correct, total, tol),
        "lossless_tol": tol,
        "counts": {"ann_correct": ann_correct, "correct": correct, "total": total},
        "stats_t": t_stat,
        "layers": layers,
        "sin_curve": {n: curves[n]["sin_ratio"] for n in names},
        "firing_curve": {n: curves[n]["firing_rate"] for n in names},
        "energy": energy,
        "config": resolved,
        "timing": {"seconds": sim_seconds, "total_seconds": time.perf_counter() - t_start, "images": total,
                   "steps": T, "image_steps_per_s": (total - int(resumed_images)) * T / max(sim_seconds, 1e-9),
                   "world_size": world, "resumed_images": int(resumed_images)},
        "versions": versions(),
    }
    if cfg.get("objective_T") is not None:
        metrics["objective"] = acc[int(cfg["objective_T"]) - 1]
    if rank == 0:
        write_outputs(metrics, run_dir)
        for r in range(world):                       # the run is complete: its states are stale
            state_path(run_dir, r, world).unlink(missing_ok=True)
        print(reporting.run_summary(metrics, steps), flush=True)
        log_run(metrics, cfg.get("logger"), run_dir, steps)
    return metrics


LAYER_COLUMNS = ("name", "scale", "firing_rate", "sin_ratio", "q", "ans", "p")


def log_run(metrics: dict, cfg_logger: Any, run_dir: Path, steps: list[int]) -> None:
    """W&B (offline by default) and local files: the accuracy curve by step, layers.csv, energy."""
    from .loggers import RunLogger

    cfg_logger = to_plain(cfg_logger)
    e = metrics["energy"]
    with RunLogger(cfg_logger, run_dir, config_dict=metrics["config"]) as rl:
        for t, a in enumerate(metrics["acc"], start=1):
            rl.log({"acc": a, "loss_vs_ann": metrics["ann_acc"] - a}, step=t)
        rl.log_table("layers", LAYER_COLUMNS, [[r[c] for c in LAYER_COLUMNS] for r in metrics["layers"]])
        rl.log_table("energy", ("layer", "op_ann", "op_snn"),
                     [[n, e["op_ann"][n], e["op_snn"][n]] for n in e["op_ann"]])
        rl.log_summary({"ann_acc": metrics["ann_acc"], "steps_to_lossless": metrics["steps_to_lossless"],
                        "energy_ratio": e["ratio"], "mean_firing_rate": e["mean_firing_rate"],
                        **{f"acc@T{t}": metrics["acc"][t - 1] for t in steps}})


def write_outputs(metrics: dict, run_dir: Path) -> None:
    """acc_curve.csv, the three plots, then metrics.json, each written atomically."""
    from . import reporting

    run_dir.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{t},{a!r}\n" for t, a in enumerate(metrics["acc"], start=1))
    atomic_write_text(run_dir / "acc_curve.csv", "t,acc\n" + rows)
    reporting.plot_acc_vs_T(metrics, run_dir / "acc_vs_T.png")
    reporting.plot_layer_curves(metrics["sin_curve"], run_dir / "sin_ratio.png", "SIN ratio")
    reporting.plot_firing_rate(metrics["layers"], run_dir / "firing_rate.png")
    write_json(run_dir / "metrics.json", metrics)
