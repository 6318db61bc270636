"""ANN training: ``train(cfg)`` behind ``train_ann.py``.

SGD + momentum + weight decay with a (warm-up +) cosine schedule, per-epoch evaluation, an atomic
checkpoint every epoch (``..._last.pt``, the full resume state) and on every new best test accuracy
(``<dataset>_<model>.pt``). ``train.resume=true`` continues from ``_last.pt`` bit-exactly: model,
optimizer, scheduler, grad scaler, every RNG and the data order are restored. Mixed precision and
channels-last apply on CUDA only. Under ``torchrun`` it trains with DDP (NCCL on CUDA, Gloo on CPU):
``train.batch_size`` is the global batch, rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from .checkpoint import default_ckpt_path, last_ckpt_path, load_checkpoint, save_checkpoint
from .data import build_data, build_loader, list_datasets
from .loggers import RunLogger
from .models import create_model, list_models
from .utils import (DistEnv, UserError, capture_rng_state, hydra_run_dir, restore_rng_state, seed_everything,
                    setup_distributed, to_plain, versions)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The ``train`` config group (conf/train/default.yaml documents every field)."""
    epochs: int = 300
    batch_size: int = 128
    eval_batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    num_workers: int = 0
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = False
    progress: bool = True
    resume: bool = False
    ckpt_path: str | None = None
    max_steps_per_epoch: int | None = None
    max_eval_batches: int | None = None
    stop_after_epochs: int | None = None


def train_config(node: Mapping | None) -> TrainConfig:
    """Validate the ``train`` node: unknown keys and out-of-range values raise :class:`UserError`."""
    d = dict(to_plain(node) or {})
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise UserError(f"unknown train option(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    out = {}
    for k, v in d.items():
        typ = fields[k].type
        if v is None:
            if "None" not in typ:
                raise UserError(f"train.{k} must not be null")
            out[k] = None
            continue
        base = typ.split("|")[0].strip()
        try:
            if base == "bool":
                if not isinstance(v, bool):
                    raise ValueError
                out[k] = v
            elif base == "int":
                if isinstance(v, bool) or float(v) != int(float(v)):
                    raise ValueError
                out[k] = int(v)
            elif base == "float":
                out[k] = float(v)
            else:
                out[k] = str(v)
        except (TypeError, ValueError):
            raise UserError(f"train.{k}={v!r} is not a valid {base}") from None
    t = TrainConfig(**out)
    for k in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(t, k) < 1:
            raise UserError(f"train.{k} must be >= 1, got {getattr(t, k)}")
    for k in ("max_steps_per_epoch", "max_eval_batches", "stop_after_epochs"):
        if getattr(t, k) is not None and getattr(t, k) < 1:
            raise UserError(f"train.{k} must be >= 1 or null, got {getattr(t, k)}")
    if t.lr <= 0 or t.momentum < 0 or t.weight_decay < 0 or not 0 <= t.label_smoothing < 1:
        raise UserError("train.lr must be > 0, momentum and weight_decay >= 0, label_smoothing in [0, 1)")
    if not 0 <= t.warmup_epochs < t.epochs:
        raise UserError(f"train.warmup_epochs must be in [0, epochs), got {t.warmup_epochs}")
    if t.num_workers < 0:
        raise UserError(f"train.num_workers must be >= 0, got {t.num_workers}")
    return t


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
    dist.all_reduce(t)
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


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device, amp: bool, channels_last: bool,
                    label_smoothing: float = 0.0, max_steps: int | None = None,
                    progress: bool = False, desc: str = "") -> tuple[float, float, int]:
    """One pass over ``loader``; returns this process's (loss sum, correct count, sample count)."""
    model.train()
    loss_sum, correct, count = 0.0, 0.0, 0
    for step, (x, y) in enumerate(_bar(loader, progress, desc=desc)):
        if max_steps is not None and step >= max_steps:
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

def _check_names(cfg: Mapping) -> None:
    if cfg["model"]["name"] not in list_models():
        raise UserError(f"unknown model {cfg['model']['name']!r}; valid models: {', '.join(list_models())}")
    if cfg["dataset"]["name"] not in list_datasets():
        raise UserError(f"unknown dataset {cfg['dataset']['name']!r}; "
                        f"valid datasets: {', '.join(list_datasets())}")


def _default_run_dir(cfg: DictConfig) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return Path(cfg.paths.output_dir) / "train" / f"{cfg.dataset.name}_{cfg.model.name}" / stamp


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


def train(cfg: DictConfig | Mapping, run_dir: str | os.PathLike | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset`` with ``cfg.train``; returns
    ``{"best_acc", "final_acc", "ckpt", "run_dir"}`` (accuracies as fractions)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    t = train_config(cfg.train)
    _check_names(cfg)
    ckpt_path = Path(t.ckpt_path) if t.ckpt_path else default_ckpt_path(cfg)
    last_path = last_ckpt_path(ckpt_path)
    resume = None
    if t.resume:
        if last_path.is_file():
            resume = load_checkpoint(last_path)
            if resume.get("model_name") != cfg.model.name:
                raise UserError(f"{last_path} holds model {resume.get('model_name')!r}, "
                                f"not {cfg.model.name!r}; set train.ckpt_path or train.resume=false")
        else:
            log.warning("train.resume=true but %s does not exist: starting from scratch", last_path)

    env, device = setup_distributed(cfg.get("device", "auto"))
    try:
        return _train(cfg, t, env, device, ckpt_path, last_path, resume, run_dir)
    finally:
        if env.owns_group:
            dist.destroy_process_group()


def _train(cfg: DictConfig, t: TrainConfig, env: DistEnv, device: torch.device, ckpt_path: Path,
           last_path: Path, resume: dict | None, run_dir: str | os.PathLike | None) -> dict:
    seed = int(cfg.get("seed", 0))
    seed_everything(seed, deterministic=t.deterministic)
    if device.type == "cuda" and not t.deterministic:
        torch.backends.cudnn.benchmark = True
    bundle = build_data(cfg.dataset, artifacts=resume["artifacts"] if resume else None)
    kwargs = cfg.model.get("kwargs")
    model_kwargs = {**bundle.model_kwargs, **(OmegaConf.to_container(kwargs, resolve=True) if kwargs else {})}
    model = create_model(cfg.model.name, num_classes=bundle.num_classes, **model_kwargs).to(device)
    cuda = device.type == "cuda"
    amp, channels_last = t.amp and cuda, t.channels_last and cuda and len(bundle.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                                weight_decay=t.weight_decay, nesterov=t.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, t.epochs, t.warmup_epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    train_loader, dsampler, gens = _train_loader(bundle.train, t, seed, env, device)
    test_ds = Subset(bundle.test, range(env.rank, len(bundle.test), env.world_size)) if env.enabled \
        else bundle.test
    test_loader = build_loader(test_ds, max(1, t.eval_batch_size // env.world_size), shuffle=False,
                               num_workers=t.num_workers)

    start_epoch, best_acc = 0, 0.0
    if env.enabled:  # identical init everywhere (DDP also broadcasts), distinct dropout streams
        seed_everything(seed + env.rank, deterministic=t.deterministic)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        rngs = resume["rng"]
        if len(rngs) != env.world_size:
            raise UserError(f"{last_path} was written by {len(rngs)} processes, this run has "
                            f"{env.world_size}; resume with the same number of processes")
        restore_rng_state(rngs[env.rank], gens)
        start_epoch, best_acc = int(resume["epoch"]), float(resume["best_acc"])
        log.info("resumed from %s at epoch %d (best acc %.4f)", last_path, start_epoch, best_acc)
    net: nn.Module = model
    if env.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    run_dir = Path(run_dir) if run_dir is not None else (hydra_run_dir() or _default_run_dir(cfg))
    config = OmegaConf.to_container(cfg, resolve=True)
    progress = t.progress and env.is_main and sys.stderr.isatty()
    base = {"config": config, "artifacts": bundle.artifacts, "model_name": cfg.model.name,
            "model_kwargs": model_kwargs, "num_classes": bundle.num_classes,
            "input_shape": tuple(bundle.input_shape), "dataset": cfg.dataset.name, "versions": versions()}
    if env.is_main:
        log.info("training %s on %s (%d train / %d test) on %s for %d epochs; run dir %s",
                 cfg.model.name, cfg.dataset.name, len(bundle.train), len(bundle.test), device,
                 t.epochs, run_dir)
    last_acc, done = None, 0
    with RunLogger(cfg.get("logger"), run_dir, config, enabled=env.is_main) as rlog:
        for epoch in range(start_epoch, t.epochs):
            if t.stop_after_epochs is not None and done >= t.stop_after_epochs:
                log.info("stopping after %d epochs (train.stop_after_epochs); resume with train.resume=true",
                         done)
                break
            t0 = time.perf_counter()
            if dsampler is not None:
                dsampler.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            sums = train_one_epoch(net, train_loader, optimizer, scaler, device, amp, channels_last,
                                   t.label_smoothing, t.max_steps_per_epoch, progress,
                                   desc=f"epoch {epoch + 1}/{t.epochs}")
            loss_sum, correct, count = _all_reduce_sums(list(sums), env, device)
            scheduler.step()
            _broadcast_buffers(model, env)
            test_loss, test_acc = evaluate(model, test_loader, device, amp, channels_last,
                                           t.max_eval_batches, env)
            last_acc, done = test_acc, done + 1
            is_best = test_acc > best_acc
            best_acc = max(best_acc, test_acc)
            rngs = _gather(capture_rng_state(gens), env)
            metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1),
                       "train_acc": correct / max(count, 1), "test_loss": test_loss, "test_acc": test_acc,
                       "best_acc": best_acc, "lr": lr, "seconds": time.perf_counter() - t0}
            if env.is_main:
                state = {**base, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "rng": rngs, "epoch": epoch + 1, "best_acc": best_acc, "test_acc": test_acc}
                if is_best:
                    save_checkpoint(ckpt_path, state)
                save_checkpoint(last_path, state)
                rlog.log(metrics, step=epoch + 1)
                log.info("epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  lr %.4g  %.1fs",
                         epoch + 1, t.epochs, metrics["train_loss"], metrics["train_acc"], test_loss,
                         test_acc, lr, metrics["seconds"])
        if last_acc is None and resume is not None:  # nothing left to train
            last_acc = float(resume.get("test_acc", resume["best_acc"]))
        result = {"best_acc": best_acc, "final_acc": last_acc, "ckpt": str(ckpt_path),
                  "run_dir": str(run_dir)}
        rlog.log_summary({**result, "epochs_done": done, "versions": base["versions"]})
    return result
