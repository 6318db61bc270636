"""Checkpoints: one path convention, atomic saves, loads with clear errors, strict weight loading.

Convention (docs/DESIGN.md): ``${paths.ckpt_dir}/${dataset.name}_${model.name}.pt`` is the best
checkpoint, ``..._last.pt`` the resume state. Both hold ``{"model", "optimizer", "scheduler",
"scaler", "rng", "epoch", "best_acc", "config", "artifacts", "model_name", "model_kwargs",
"num_classes", "input_shape", "versions"}`` and load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .utils import UserError, atomic_torch_save, file_kind


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The checkpoint file does not exist; the message gives the command that creates it."""


class CheckpointMismatchError(UserError):
    """A state dict does not fit a model; the message names missing, unexpected and misshaped keys."""


def default_ckpt_path(cfg: Mapping) -> Path:
    """``${paths.ckpt_dir}/${dataset.name}_${model.name}.pt`` for a config with those groups."""
    return Path(str(cfg["paths"]["ckpt_dir"])) / f"{cfg['dataset']['name']}_{cfg['model']['name']}.pt"


def last_ckpt_path(best_path: str | os.PathLike) -> Path:
    """The resume-state path beside a best checkpoint: ``x.pt`` -> ``x_last.pt``."""
    p = Path(best_path)
    return p.with_name(f"{p.stem}_last{p.suffix or '.pt'}")


def missing_checkpoint_message(dataset: str, model: str, path: str | os.PathLike) -> str:
    """One line saying the checkpoint is missing and the exact command that trains it."""
    p = Path(path)
    cmd = f"python train_ann.py dataset={dataset} model={model}"
    if p.name != f"{dataset}_{model}.pt":
        cmd += f" train.ckpt_path={p}"
    elif p.parent.resolve() != Path("checkpoints").resolve():
        cmd += f" paths.ckpt_dir={p.parent}"
    return f"checkpoint not found: {p}; create it with: {cmd}"


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Save ``state`` atomically (temporary file + ``os.replace``); returns the path."""
    return atomic_torch_save(dict(state), path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    dataset: str | None = None, model: str | None = None) -> dict:
    """Load a checkpoint dict; a missing file raises :class:`CheckpointNotFoundError`.

    ``dataset``/``model`` make the error message give the exact training command; without them
    the names are read from the ``<dataset>_<model>.pt`` file name when it has that form.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"checkpoint {p} is a directory; give the .pt file train_ann.py wrote "
                        f"(e.g. {p / 'digits_digits_cnn.pt'})")
    if p.exists() and not p.is_file():              # never opened: a FIFO would block, a device read forever
        raise UserError(f"checkpoint {p} is {file_kind(p)}, not a checkpoint file; give the .pt file "
                        "train_ann.py wrote")
    if p.is_symlink() and not p.exists():
        raise UserError(f"checkpoint {p} is a symbolic link to {os.readlink(p)}, which does not exist; give the "
                        ".pt file train_ann.py wrote")
    if not p.is_file():
        if dataset is None or model is None:
            stem = p.stem.removesuffix("_last")
            dataset, _, model = stem.partition("_")
            if not model:
                raise CheckpointNotFoundError(f"checkpoint not found: {p}")
        raise CheckpointNotFoundError(missing_checkpoint_message(dataset, model, p))
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty (0 bytes; a save that did not finish?); give the .pt file "
                        "train_ann.py wrote")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or unsafe pickled objects
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights_only" in first or "Weights only load failed" in first:   # torch's advice does not apply here
            first = "not a file of tensors that torch.load can read safely"
        raise UserError(f"{p} is not a readable checkpoint ({type(e).__name__}: {first[:200]}); give a .pt file "
                        "written by train_ann.py or torch.save(model.state_dict())") from None
    state = ckpt.get("model") if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping) else ckpt
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{p} holds no model weights (a {type(ckpt).__name__}"
                        f"{' with keys ' + str(sorted(ckpt)[:6]) if isinstance(ckpt, Mapping) else ''}); give a "
                        "checkpoint of train_ann.py or torch.save(model.state_dict())")
    return ckpt


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP ("module.") and torch.compile ("_orig_mod.") wrappers prefix every key
    out = {}
    for k, v in sd.items():
        for pre in ("module.", "_orig_mod."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def load_model_weights(model: nn.Module, ckpt_or_path: Mapping | str | os.PathLike,
                       strict: bool = True) -> nn.Module:
    """Load weights into ``model`` (in place, returned) from a checkpoint dict, a path or a state dict.

    Every key is checked before anything is copied: with ``strict`` any missing or unexpected key,
    and always any shape mismatch, raises :class:`CheckpointMismatchError` naming the keys.
    """
    src = ckpt_or_path
    if isinstance(src, (str, os.PathLike)):
        src = load_checkpoint(src)
    sd = src["model"] if "model" in src and isinstance(src["model"], Mapping) else src
    sd = _strip_prefixes(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if strict and missing:
        problems.append(f"missing keys: {_short(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_short(shapes)}")
    if problems:
        name = src.get("model_name", "?") if isinstance(src, Mapping) else "?"
        raise CheckpointMismatchError(
            f"checkpoint (model {name!r}) does not fit {type(model).__name__}: " + "; ".join(problems))
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointMismatchError(f"checkpoint weights {_short(bad)} hold NaN or inf values (a diverged "
                                      "training?); retrain or use an earlier checkpoint")
    model.load_state_dict(sd, strict=strict)
    return model


def _short(items: list[str], n: int = 6) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
