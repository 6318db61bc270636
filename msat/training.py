"""ANN training: ``train(cfg)`` behind ``train_ann.py``.

SGD + momentum + weight decay with a (warm-up +) cosine schedule, per-epoch evaluation, an atomic
checkpoint every epoch (``..._last.pt``, the full resume state) and on every new best test accuracy
(``<dataset>_<model>.pt``). ``train.resume=true`` continues from ``_last.pt`` bit-exactly: model,
optimizer, scheduler, grad scaler, every RNG and the data order are restored. Mixed precision and
channels-last apply on CUDA only. Under ``torchrun`` it trains with DDP (NCCL on CUDA, Gloo on CPU):
``train.batch_size`` is the global batch, rank 0 writes checkpoints and logs.

A run holds a lock on its run directory and one on its checkpoint (``msat.runs``): a second training into
either is refused. Its files in the run directory (``config.yaml``, ``metrics.jsonl`` / ``.csv``, written as
it goes: they are the log a resume continues) form one set, committed by ``summary.json``: the old one is
removed before the run writes anything, the new one is written last with the sha256 of every file of the set.
SIGINT / SIGTERM stop at the next step; the state of the last completed epoch is in ``_last.pt`` and one line
says from which epoch ``train.resume=true`` continues.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from .checkpoint import default_ckpt_path, last_ckpt_path, load_checkpoint, save_checkpoint
from .config import TrainConfig, TrainRunConfig, from_mapping
from .data import build_data, build_loader, dataset_config
from .loggers import RunLogger
from .models import build_model
from .models.build import activation_sites, check_input, model_spec
from .runs import CheckpointLock, Run, run_id, run_in_dir, write_config
from .utils import (DistEnv, Interrupted, UserError, all_reduce_sum, capture_rng_state, hydra_run_dir,
                    restore_rng_state, resume_command, seed_everything, to_plain, versions)

log = logging.getLogger(__name__)

# the files of a training's result set in its run directory; SUMMARY, written last, commits them
RESULT_FILES = ["config.yaml", "metrics.jsonl", "metrics.csv"]
SUMMARY = "summary.json"


def lr_factor(epoch: int, epochs: int, warmup_epochs: int = 0) -> float:
    """Multiplier of the base lr during ``epoch`` (0-based): linear warm-up, then cosine to 0."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    span = max(1, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


# ----------------------------------------------------------------------------- distributed

def _all_reduce_sums(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    all_reduce_sum([t])
    return t.tolist()


# ----------------------------------------------------------------------------- loops

def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _bar(it: Any, enabled: bool, **kw: Any) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, leave=False, dynamic_ncols=True, **kw)


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ProgressLog:
    """Progress of long work that is not on a terminal: one log line at every ``step`` (a fraction) of ``total``
    with the rate and the time left; no line sooner than ``min_seconds`` after the start (short work stays quiet).
    ``done``: units already done before this process (a resumed run); ``logger``: default this module's."""

    def __init__(self, total: int, what: str, unit: str, done: int = 0, step: float = 0.1,
                 min_seconds: float = 0.0, logger: logging.Logger | None = None) -> None:
        self.total, self.what, self.unit, self.step, self.min_seconds = total, what, unit, step, min_seconds
        self.log = logger or log
        self.done = self.start = done
        self.t0 = time.perf_counter()
        self.next = self._mark_after(done)

    def _mark_after(self, done: int) -> float:
        return (math.floor(done / max(self.total, 1) / self.step + 1e-9) + 1) * self.step * self.total

    def update(self, n: int) -> None:
        self.done += n
        if self.done < self.next - 1e-9 or self.total <= 0:
            return
        self.next = self._mark_after(self.done)
        elapsed = time.perf_counter() - self.t0
        if elapsed < self.min_seconds:
            return
        rate = (self.done - self.start) / max(elapsed, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        done = min(self.done, self.total)
        self.log.info("%s: %d/%d %s (%.0f %%), %.3g %s/s, %s left", self.what, done, self.total, self.unit,
                      100.0 * done / self.total, rate, self.unit, _duration(left))


def _stop_everywhere(stop: Any, env: DistEnv | None, device: torch.device) -> bool:
    """Whether a stop signal arrived on any rank (DDP ranks must leave the epoch at the same step)."""
    flag = 1.0 if stop is not None and stop.requested else 0.0
    if env is not None and env.enabled:
        flag = _all_reduce_sums([flag], env, device)[0]
    return flag > 0


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device, amp: bool, channels_last: bool,
                    label_smoothing: float = 0.0, max_steps: int | None = None,
                    progress: bool = False, desc: str = "", stop: Any = None,
                    env: DistEnv | None = None, log_progress: bool = False) -> tuple[float, float, int]:
    """One pass over ``loader``; returns this process's (loss sum, correct count, sample count).

    ``stop`` (a ``StopSignals``): the pass ends early, at a step boundary, once a signal arrived.
    ``log_progress``: a log line every 10 % of an epoch that runs longer than 30 s (no terminal, no bar)."""
    model.train()
    loss_sum, correct, count = 0.0, 0.0, 0
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    plog = ProgressLog(steps, desc or "epoch", "batches", min_seconds=30.0) if log_progress else None
    for step, (x, y) in enumerate(_bar(loader, progress, desc=desc)):
        if (max_steps is not None and step >= max_steps) or _stop_everywhere(stop, env, device):
            break
        x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.item() * y.numel()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
        if plog is not None:
            plog.update(1)
    return loss_sum, correct, count


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
             channels_last: bool = False, max_batches: int | None = None,
             env: DistEnv | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) over ``loader``, summed over DDP processes."""
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    loss_sum, correct, count = _all_reduce_sums([loss_sum, correct, count], env or DistEnv(), device)
    if count == 0:
        raise UserError("the test split is empty")
    return loss_sum / count, correct / count


# ----------------------------------------------------------------------------- run function

def check_config(cfg: Any) -> TrainRunConfig:
    """Every check that can fail before compute: keys, types and ranges of every group, names, the model's
    arguments. The validated config is what the run reads from then on."""
    rc = from_mapping(TrainRunConfig, cfg)
    ds = dataset_config(rc.dataset)
    activation_sites(model_spec(rc.model), ds["num_classes"])      # the model's arguments
    return rc


def _default_run_dir(rc: TrainRunConfig) -> Path:
    return Path(rc.paths.output_dir) / "train" / f"{rc.dataset['name']}_{rc.model.name}" / run_id()


# keys of the saved config that a resumed run must share: anything else would be silently ignored
RESUME_KEYS = ("seed", "dataset", "train.epochs", "train.batch_size", "train.lr", "train.momentum",
               "train.weight_decay", "train.nesterov", "train.label_smoothing", "train.warmup_epochs",
               "train.lambda_lr", "train.amp")


def _get(d: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, Mapping) else None
    return d


def check_resume(resume: Mapping, config: Mapping, spec: Mapping, path: Path) -> None:
    """A resume state must come from the same model, data, optimizer and schedule as this run."""
    saved_spec = resume.get("model_spec") or {}
    if not isinstance(resume.get("model"), Mapping) or "optimizer" not in resume or "rng" not in resume:
        raise UserError(f"{path} is not a training state of train_ann.py (no model/optimizer/rng); "
                        "set train.resume=false or point train.ckpt_path elsewhere")
    if saved_spec and saved_spec != spec or resume.get("model_name") not in (None, spec["name"]):
        diff = [k for k in spec if saved_spec.get(k) != spec[k]] if saved_spec else ["name"]
        shown = ", ".join(f"{k}: {saved_spec.get(k, resume.get('model_name'))!r} vs {spec[k]!r}" for k in diff)
        raise UserError(f"{path} holds model {resume.get('model_name')!r}, this run builds {spec['name']!r} "
                        f"({shown}); set train.ckpt_path or train.resume=false")
    saved = resume.get("config") or {}
    diff = [k for k in RESUME_KEYS if _get(saved, k) != _get(config, k)]
    if diff:
        shown = "; ".join(f"{k}: saved {_get(saved, k)!r}, now {_get(config, k)!r}" for k in diff)
        raise UserError(f"train.resume=true: {path} was trained with other values ({shown}); resume with the "
                        "original values or start a new run (train.resume=false, another train.ckpt_path)")


def _train_loader(ds: Dataset, t: TrainConfig, seed: int, env: DistEnv,
                  device: torch.device) -> tuple[DataLoader, DistributedSampler | None, dict]:
    """Shuffled training loader whose order is a function of (seed, epoch) through saved generators.

    Workers are not persistent, so each epoch's worker seeds come from the saved loader generator
    too (exact resume with random augmentation in workers).
    """
    loader_gen = torch.Generator().manual_seed(seed * 7919 + env.rank + 1)
    gens = {"loader": loader_gen}
    if env.enabled:
        sampler = DistributedSampler(ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=seed, drop_last=False)
        dsampler = sampler
    else:
        sampler_gen = torch.Generator().manual_seed(seed)
        sampler, dsampler = RandomSampler(ds, generator=sampler_gen), None
        gens["sampler"] = sampler_gen
    per_rank = max(1, t.batch_size // env.world_size)
    loader = DataLoader(ds, batch_size=per_rank, sampler=sampler, num_workers=t.num_workers,
                        pin_memory=device.type == "cuda", drop_last=False, generator=loader_gen,
                        persistent_workers=False)
    return loader, dsampler, gens


def _broadcast_buffers(model: nn.Module, env: DistEnv) -> None:
    # BN running statistics from rank 0 everywhere: every rank evaluates the checkpointed model
    # (evaluation runs on the bare model, since shards may differ by one batch between ranks)
    if env.enabled:
        for b in model.buffers():
            dist.broadcast(b, src=0)


def _gather(obj: Any, env: DistEnv) -> list:
    if not env.enabled:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def train(cfg: Any, run_dir: str | os.PathLike | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset`` with ``cfg.train``; returns
    ``{"best_acc", "best_epoch", "final_acc", "ckpt", "run_dir"}`` (accuracies as fractions) and prints one line
    (:func:`final_line`). The run is held by :func:`msat.runs.run_in_dir` (locks on its directory and on its
    checkpoint, signals, the logger and the process group closed on every path)."""
    rc = check_config(cfg)
    config = dict(to_plain(cfg))
    ckpt_path = Path(rc.train.ckpt_path) if rc.train.ckpt_path else default_ckpt_path(config)
    run_dir = Path(run_dir) if run_dir is not None else (hydra_run_dir() or _default_run_dir(rc))
    with run_in_dir(run_dir, rc.device, locks=(CheckpointLock(ckpt_path),)) as run:
        result = _Training(rc, config, run, ckpt_path).fit()
    if run.env.is_main:
        print(final_line(result), flush=True)             # last: after the logger's closing lines
    return result


def _optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """SGD; QCFS clipping levels (``lam``) get ``train.lambda_lr`` when set."""
    lam = [p for n, p in model.named_parameters() if n.endswith(".lam") or n == "lam"]
    rest = [p for n, p in model.named_parameters() if not (n.endswith(".lam") or n == "lam")]
    groups = [{"params": rest}]
    if lam:
        groups.append({"params": lam, **({"lr": t.lambda_lr} if t.lambda_lr is not None else {})})
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov)


def interrupt_message(signum: int, epoch: int, epochs: int, saved: bool, last_path: Path,
                      run_dir: Path | None) -> str:
    """The line an interrupted training ends with: the epoch it stopped in (``epoch``, 0-based), what
    ``last_path`` holds, the epoch a resume starts from and the command. ``saved``: ``last_path`` holds this
    run's state after ``epoch`` epochs (the partial epoch is never saved); without it, no epoch was completed
    and a ``last_path`` that exists belongs to another run, so the command starts afresh instead."""
    head = f"{signal.Signals(signum).name}: stopped during epoch {epoch + 1}/{epochs}"
    hydra = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    if saved:
        return (f"{head}, whose steps are not saved: {last_path} holds the state after epoch {epoch}, so the "
                f"resume starts at epoch {epoch + 1}; resume with: {resume_command('train.resume=true', *hydra)}")
    if not last_path.exists():
        return (f"{head}; no epoch was completed, so nothing was saved and the resume starts at epoch 1; "
                f"resume with: {resume_command('train.resume=true', *hydra)}")
    return (f"{head}; no epoch was completed, so nothing was saved ({last_path} is the state of another run, "
            f"which train.resume=true would continue); start again with: "
            f"{resume_command('train.resume=false', *hydra)}")


@dataclass
class _Model:
    """What the epochs of a training share: the model (``net``: it, or its DDP wrapper), its optimizer, schedule
    and grad scaler, the loaders and the generators of the data order, the precision and layout."""

    model: nn.Module
    net: nn.Module
    spec: dict
    bundle: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    dsampler: Optional[DistributedSampler]
    gens: dict
    test_loader: DataLoader
    amp: bool
    channels_last: bool


class _Training:
    """One training inside its :class:`msat.runs.Run`: :meth:`fit` builds (:meth:`build`), restores a resume
    state (:meth:`restore`), runs the epochs (:meth:`epoch`, :meth:`save`) and commits (:meth:`finish`)."""

    def __init__(self, rc: TrainRunConfig, config: dict, run: Run, ckpt_path: Path):
        self.rc, self.t, self.config, self.run = rc, rc.train, config, run
        self.env, self.device = run.env, run.device
        self.ckpt_path, self.last_path = ckpt_path, last_ckpt_path(ckpt_path)
        self.resume: Optional[dict] = None
        if rc.train.resume:
            if self.last_path.is_file():
                self.resume = load_checkpoint(self.last_path)
            else:
                log.warning("train.resume=true but %s does not exist: starting from scratch", self.last_path)
        self.start_epoch, self.best_acc, self.best_epoch = 0, 0.0, None
        self.last_acc: Optional[float] = None
        self.done = 0

    def fit(self) -> dict:
        """The whole training: the epochs from the start (or the resume state) on, then the committed set."""
        t = self.t
        m = self.build()
        self.restore(m)
        if self.env.enabled:
            m.net = nn.parallel.DistributedDataParallel(m.model, device_ids=[self.device.index]
                                                        if self.device.type == "cuda" else None)
        base = self.begin(m)
        rlog = self.run.open_logger(self.rc.logger, self.config,
                                    keep_until=self.start_epoch if self.resume else None)
        for epoch in range(self.start_epoch, t.epochs):
            if t.stop_after_epochs is not None and self.done >= t.stop_after_epochs:
                log.info("stopping after %d epochs (train.stop_after_epochs); resume with train.resume=true",
                         self.done)
                break
            self.epoch(m, epoch, rlog, base)
        return self.finish(rlog, base)

    def build(self) -> _Model:
        """Seeds, data, the model (checked against a resume state and the data), optimizer, schedule, loaders."""
        t, seed, env, device, resume = self.t, self.rc.seed, self.env, self.device, self.resume
        seed_everything(seed, deterministic=t.deterministic)
        if device.type == "cuda" and not t.deterministic:
            torch.backends.cudnn.benchmark = True
        bundle = build_data(self.rc.dataset, artifacts=resume["artifacts"] if resume else None)
        model, spec = build_model(self.rc.model, bundle.num_classes, bundle.model_kwargs)
        if resume is not None:
            check_resume(resume, self.config, spec, self.last_path)
        check_input(model, bundle.train[0][0].unsqueeze(0), spec, bundle.name, bundle.num_classes)
        model = model.to(device)
        cuda = device.type == "cuda"
        amp, channels_last = t.amp and cuda, t.channels_last and cuda and len(bundle.input_shape) == 3
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = _optimizer(model, t)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, t.epochs, t.warmup_epochs))
        scaler = torch.amp.GradScaler(device.type, enabled=amp)
        train_loader, dsampler, gens = _train_loader(bundle.train, t, seed, env, device)
        test_ds = Subset(bundle.test, range(env.rank, len(bundle.test), env.world_size)) if env.enabled \
            else bundle.test
        test_loader = build_loader(test_ds, max(1, t.eval_batch_size // env.world_size), shuffle=False,
                                   num_workers=t.num_workers)
        return _Model(model, model, spec, bundle, optimizer, scheduler, scaler, train_loader, dsampler, gens,
                      test_loader, amp, channels_last)

    def restore(self, m: _Model) -> None:
        """Per-rank seeds (DDP), then the resume state: weights, optimizer, schedule, scaler, every RNG."""
        env, resume = self.env, self.resume
        if env.enabled:  # identical init everywhere (DDP also broadcasts), distinct dropout streams
            seed_everything(self.rc.seed + env.rank, deterministic=self.t.deterministic)
        if resume is None:
            return
        m.model.load_state_dict(resume["model"])
        m.optimizer.load_state_dict(resume["optimizer"])
        m.scheduler.load_state_dict(resume["scheduler"])
        m.scaler.load_state_dict(resume["scaler"])
        rngs = resume["rng"]
        if len(rngs) != env.world_size:
            raise UserError(f"{self.last_path} was written by {len(rngs)} processes, this run has "
                            f"{env.world_size}; resume with the same number of processes")
        restore_rng_state(rngs[env.rank], m.gens)
        self.start_epoch, self.best_acc = int(resume["epoch"]), float(resume["best_acc"])
        self.best_epoch = resume.get("best_epoch")
        log.info("resumed from %s at epoch %d (best acc %.4f)", self.last_path, self.start_epoch, self.best_acc)

    def begin(self, m: _Model) -> dict:
        """What every checkpoint records besides the state; rank 0 removes the old result's marker and writes
        the config (the directory holds no result until this run commits) and says what it trains."""
        name, ds_name, run_dir = m.spec["name"], self.rc.dataset["name"], self.run.run_dir
        base = {"config": self.config, "artifacts": m.bundle.artifacts, "model_name": name, "model_spec": m.spec,
                "model_kwargs": m.spec["kwargs"], "num_classes": m.bundle.num_classes,
                "input_shape": tuple(m.bundle.input_shape), "dataset": ds_name, "versions": versions(),
                "run_dir": str(run_dir), "seed": self.rc.seed}
        if self.env.is_main:
            (run_dir / SUMMARY).unlink(missing_ok=True)
            write_config(run_dir / "config.yaml", self.config)
            log.info("training %s on %s (%d train / %d test) on %s for %d epochs; run dir %s",
                     name, ds_name, len(m.bundle.train), len(m.bundle.test), self.device, self.t.epochs, run_dir)
        return base

    def epoch(self, m: _Model, epoch: int, rlog: RunLogger, base: dict) -> None:
        """One epoch (0-based ``epoch``): train (stopping at a step on a signal), evaluate, log and save."""
        t, env, device, signals = self.t, self.env, self.device, self.run.signals
        t0 = time.perf_counter()
        if m.dsampler is not None:
            m.dsampler.set_epoch(epoch)
        lr = m.optimizer.param_groups[0]["lr"]
        progress = t.progress and env.is_main and sys.stderr.isatty()
        log_progress = t.progress and env.is_main and not progress
        sums = train_one_epoch(m.net, m.train_loader, m.optimizer, m.scaler, device, m.amp, m.channels_last,
                               t.label_smoothing, t.max_steps_per_epoch, progress,
                               desc=f"epoch {epoch + 1}/{t.epochs}", stop=signals, env=env,
                               log_progress=log_progress)
        if _stop_everywhere(signals, env, device):
            # epoch > 0: _last.pt holds this run's state after `epoch` epochs (saved by it, or resumed from)
            signum = signals.requested or signal.SIGTERM
            raise Interrupted(interrupt_message(signum, epoch, t.epochs, epoch > 0, self.last_path,
                                                self.run.run_dir if hydra_run_dir() else None), signum)
        loss_sum, correct, count = _all_reduce_sums(list(sums), env, device)
        m.scheduler.step()
        _broadcast_buffers(m.model, env)
        test_loss, test_acc = evaluate(m.model, m.test_loader, device, m.amp, m.channels_last,
                                       t.max_eval_batches, env)
        self.last_acc, self.done = test_acc, self.done + 1
        is_best = test_acc > self.best_acc or not self.ckpt_path.is_file()      # the first epoch is the best so far
        if test_acc > self.best_acc or (self.best_epoch is None and self.resume is None):  # the epoch best_acc is of
            self.best_epoch = epoch + 1
        self.best_acc = max(self.best_acc, test_acc)
        rngs = _gather(capture_rng_state(m.gens), env)
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1),
                   "train_acc": correct / max(count, 1), "test_loss": test_loss, "test_acc": test_acc,
                   "best_acc": self.best_acc, "lr": lr, "seconds": time.perf_counter() - t0}
        if env.is_main:
            self.save(m, epoch, metrics, rngs, is_best, rlog, base)

    def save(self, m: _Model, epoch: int, metrics: dict, rngs: list, is_best: bool, rlog: RunLogger,
             base: dict) -> None:
        """Rank 0 after an epoch: its row, then the state (``_last.pt``; the best checkpoint on a new best)."""
        # the row first: a resume keeps the rows up to the epoch of _last.pt, so a kill between the
        # two never leaves an epoch unlogged or logged twice
        rlog.log(metrics, step=epoch + 1)
        state = {**base, "model": m.model.state_dict(), "optimizer": m.optimizer.state_dict(),
                 "scheduler": m.scheduler.state_dict(), "scaler": m.scaler.state_dict(),
                 "rng": rngs, "epoch": epoch + 1, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                 "test_acc": metrics["test_acc"]}
        if is_best:
            save_checkpoint(self.ckpt_path, state)
        save_checkpoint(self.last_path, state)
        log.info("epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  lr %.4g  %.1fs",
                 epoch + 1, self.t.epochs, metrics["train_loss"], metrics["train_acc"], metrics["test_loss"],
                 metrics["test_acc"], metrics["lr"], metrics["seconds"])

    def finish(self, rlog: RunLogger, base: dict) -> dict:
        """The result; the summary to the logger, and on rank 0 the committed set (``summary.json`` last); ``train``
        prints the final line once the logger has closed."""
        if self.last_acc is None and self.resume is not None:  # nothing left to train
            self.last_acc = float(self.resume.get("test_acc", self.resume["best_acc"]))
        result = {"best_acc": self.best_acc, "best_epoch": self.best_epoch, "final_acc": self.last_acc,
                  "ckpt": str(self.ckpt_path), "run_dir": str(self.run.run_dir)}
        rlog.log_summary({**result, "epochs_done": self.done, "versions": base["versions"]})     # W&B, summary.json
        if self.env.is_main:                                  # summary.json again, last, naming the set it commits
            self.run.commit(rlog.summary, names=RESULT_FILES, marker=SUMMARY)
        return result


def final_line(result: Mapping) -> str:
    """The line a training ends with: the best test accuracy, its epoch, the checkpoint that holds it."""
    epoch = result.get("best_epoch")
    return (f"train_ann: best test accuracy {100 * result['best_acc']:.2f} % at epoch "
            f"{epoch if epoch is not None else '? (resumed from an older state)'}; checkpoint {result['ckpt']}; "
            f"run dir {result['run_dir']}")
