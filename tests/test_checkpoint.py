"""Checkpoints: atomic save/load round trip, path convention, clear errors for missing files and misfits."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from msat.checkpoint import (CheckpointMismatchError, CheckpointNotFoundError, default_ckpt_path,
                             last_ckpt_path, load_checkpoint, load_model_weights,
                             missing_checkpoint_message, save_checkpoint)
from msat.models import create_model
from msat.utils import (UserError, atomic_write_bytes, atomic_write_text, capture_rng_state,
                        restore_rng_state, seed_everything, write_json)


def test_path_convention():
    cfg = OmegaConf.create({"paths": {"ckpt_dir": "/c"}, "dataset": {"name": "cifar10"},
                            "model": {"name": "vgg16"}})
    assert str(default_ckpt_path(cfg)) == "/c/cifar10_vgg16.pt"
    assert str(last_ckpt_path(default_ckpt_path(cfg))) == "/c/cifar10_vgg16_last.pt"


def test_save_load_round_trip_is_atomic(tmp_path):
    model = create_model("digits_cnn")
    p = tmp_path / "sub" / "digits_digits_cnn.pt"
    save_checkpoint(p, {"model": model.state_dict(), "epoch": 3, "rng": capture_rng_state()})
    assert sorted(os.listdir(p.parent)) == ["digits_digits_cnn.pt"]        # no temporary left behind
    ck = load_checkpoint(p)                                               # weights_only=True loads it
    assert ck["epoch"] == 3
    other = load_model_weights(create_model("digits_cnn", width=32), ck)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "text is not bytes")            # fails inside the temporary file
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    write_json(p, {"acc": np.float32(0.5), "t": torch.tensor(2)})
    assert p.read_text() == '{\n  "acc": 0.5,\n  "t": 2\n}\n'


def test_missing_checkpoint_names_the_training_command(tmp_path):
    p = tmp_path / "cifar10_vgg16.pt"
    with pytest.raises(CheckpointNotFoundError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert msg == missing_checkpoint_message("cifar10", "vgg16", p)
    assert f"python train_ann.py dataset=cifar10 model=vgg16 paths.ckpt_dir={tmp_path}" in msg
    assert isinstance(e.value, UserError) and isinstance(e.value, FileNotFoundError)
    assert missing_checkpoint_message("digits", "digits_cnn", "checkpoints/digits_digits_cnn.pt") == (
        "checkpoint not found: checkpoints/digits_digits_cnn.pt; "
        "create it with: python train_ann.py dataset=digits model=digits_cnn")
    assert "train.ckpt_path=/x/mine.pt" in missing_checkpoint_message("digits", "digits_cnn", "/x/mine.pt")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "digits_digits_cnn.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="digits_digits_cnn.pt is not a readable checkpoint"):
        load_checkpoint(p)


def test_mismatch_names_shapes_missing_and_unexpected_keys():
    ck = {"model": create_model("digits_cnn").state_dict(), "model_name": "digits_cnn"}
    narrow = create_model("digits_cnn", width=16)
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as e:
        load_model_weights(narrow, ck)
    msg = str(e.value)
    assert "shape mismatches: features.0.weight (checkpoint (32, 1, 3, 3), model (16, 1, 3, 3))" in msg
    assert "missing" not in msg and "unexpected" not in msg
    for k, v in narrow.state_dict().items():                              # nothing was copied
        assert torch.equal(v, before[k])
    sd = dict(ck["model"])
    sd["extra.weight"] = sd.pop("classifier.4.weight")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: classifier\.4\.weight; "
                                                       r"unexpected keys: extra\.weight"):
        load_model_weights(create_model("digits_cnn"), sd)
    sd["classifier.4.weight"] = sd["extra.weight"]
    load_model_weights(create_model("digits_cnn"), sd, strict=False)     # extra key tolerated


def test_ddp_prefixed_keys_load():
    src = create_model("digits_cnn")
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst = load_model_weights(create_model("digits_cnn"), {"model": sd})
    assert torch.equal(dst.features[0].weight, src.features[0].weight)


def test_rng_state_round_trip():
    seed_everything(1)
    g = torch.Generator().manual_seed(5)
    state = capture_rng_state({"g": g})
    a = (np.random.rand(), torch.rand(2), torch.randperm(10, generator=g))
    restore_rng_state(state, {"g": g})
    b = (np.random.rand(), torch.rand(2), torch.randperm(10, generator=g))
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
