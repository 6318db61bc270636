"""ANN training on real data (scikit-learn digits): accuracy, exact resume, entry point, DDP, config."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from msat.checkpoint import load_checkpoint, load_model_weights
from msat.models import create_model
from msat.config import TrainConfig, from_mapping
from msat.training import evaluate, lr_factor, train
from msat.utils import UserError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def make_cfg(tmp_path: Path, *overrides: str):
    """The composed train_ann config with every path inside ``tmp_path`` and no W&B."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train_ann", overrides=[
            "logger=none", f"paths.root_dir={tmp_path}", "train.progress=false", *overrides])


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_DATASETS_OFFLINE="1")
    env.pop("WANDB_API_KEY", None)
    return env


def test_digits_cnn_reaches_95_percent_and_writes_everything(tmp_path):
    cfg = make_cfg(tmp_path, "train.epochs=4")
    res = train(cfg, run_dir=tmp_path / "run")
    assert res["best_acc"] >= 0.95, res
    ckpt_path = tmp_path / "checkpoints" / "digits_digits_cnn.pt"
    assert res["ckpt"] == str(ckpt_path) and ckpt_path.is_file()
    last = load_checkpoint(tmp_path / "checkpoints" / "digits_digits_cnn_last.pt")
    assert last["epoch"] == 4 and last["model_name"] == "digits_cnn" and last["num_classes"] == 10
    assert last["config"]["train"]["epochs"] == 4 and last["model_kwargs"] == {"width": 32, "pool": "max"}
    for key in ("optimizer", "scheduler", "scaler", "rng", "artifacts", "versions", "input_shape"):
        assert key in last
    # the best checkpoint reproduces its recorded accuracy
    best = load_checkpoint(ckpt_path)
    assert best["test_acc"] == pytest.approx(res["best_acc"]) and best["best_acc"] == res["best_acc"]
    from msat.data import build_data, build_loader
    model = load_model_weights(create_model("digits_cnn"), best)
    _, acc = evaluate(model, build_loader(build_data(cfg.dataset).test, 256), torch.device("cpu"))
    assert acc == pytest.approx(res["best_acc"])
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}
    assert float(rows[0]["lr"]) == pytest.approx(0.1)       # cosine: full lr in the first epoch
    assert float(rows[-1]["test_acc"]) == pytest.approx(res["final_acc"])
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_acc"] == res["best_acc"]
    assert not (tmp_path / "run" / "wandb").exists()


def _params_and_buffers(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_kill_and_resume_gives_identical_weights(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("train.epochs=3", "train.batch_size=32", "train.max_steps_per_epoch=6",
              "train.eval_batch_size=512", "seed=3")
    train(make_cfg(a, *common), run_dir=a / "run")
    # "killed" after epoch 2, then resumed from the _last.pt it left
    part = train(make_cfg(b, *common, "train.stop_after_epochs=2"), run_dir=b / "run1")
    assert load_checkpoint(b / "checkpoints" / "digits_digits_cnn_last.pt")["epoch"] == 2
    torch.manual_seed(12345)  # disturb every global RNG: resume must restore them
    res = train(make_cfg(b, *common, "train.resume=true"), run_dir=b / "run2")
    sa = _params_and_buffers(a / "checkpoints" / "digits_digits_cnn_last.pt")
    sb = _params_and_buffers(b / "checkpoints" / "digits_digits_cnn_last.pt")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert part["final_acc"] is not None and res["best_acc"] == pytest.approx(
        load_checkpoint(a / "checkpoints" / "digits_digits_cnn.pt")["best_acc"])
    # the resumed run logged only the remaining epoch
    rows = list(csv.DictReader(open(b / "run2" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [3]


def test_resume_of_other_model_is_refused(tmp_path):
    train(make_cfg(tmp_path, "train.epochs=1", "train.max_steps_per_epoch=1",
                   "train.ckpt_path=" + str(tmp_path / "x.pt")), run_dir=tmp_path / "r")
    with pytest.raises(UserError, match="holds model 'digits_cnn'"):
        train(make_cfg(tmp_path, "model=resnet20", "train.resume=true",
                       "train.ckpt_path=" + str(tmp_path / "x.pt")), run_dir=tmp_path / "r2")


def test_bad_train_options_fail_before_compute(tmp_path):
    with pytest.raises(UserError, match="unknown key train.epocs; valid keys of train: epochs"):
        train(make_cfg(tmp_path, "+train.epocs=3"))
    with pytest.raises(UserError, match="train.epochs must be >= 1"):
        train(make_cfg(tmp_path, "train.epochs=0"))
    with pytest.raises(UserError, match="train.lr must be > 0"):
        train(make_cfg(tmp_path, "train.lr=0"))
    with pytest.raises(UserError, match="unknown model 'nope'; valid models: .*digits_cnn"):
        train(make_cfg(tmp_path, "model.name=nope"))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "outputs").exists()


def test_train_config_defaults_follow_the_paper_recipe(tmp_path):
    t = from_mapping(TrainConfig, make_cfg(tmp_path, "dataset=cifar10").train, "train")
    assert (t.lr, t.momentum, t.weight_decay, t.batch_size, t.epochs) == (0.1, 0.9, 5e-4, 128, 300)


def test_lr_schedule_warmup_then_cosine():
    assert [lr_factor(e, 10, 2) for e in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, 2) == 1.0
    assert lr_factor(6, 10, 2) == pytest.approx(0.5)             # half way through the cosine part
    assert lr_factor(9, 10, 0) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(0.9 * torch.pi)).item()))


@pytest.mark.parametrize("group,options", [("train", ["default", "smoke"]), ("logger", ["wandb", "none"]),
                                           ("hydra/launcher", ["local", "slurm"])])
def test_config_groups_compose(group, options, tmp_path):
    for opt in options:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train_ann", overrides=[f"{group}={opt}"], return_hydra_config=True)
        if group == "hydra/launcher":
            assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")
        else:
            assert cfg[group]


def test_paths_follow_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MSAT_ROOT", raising=False)
    monkeypatch.setenv("MSAT_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("MSAT_CKPT_DIR", str(tmp_path / "c"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train_ann")
    assert cfg.paths.data_dir == str(tmp_path / "d") and cfg.paths.ckpt_dir == str(tmp_path / "c")
    assert cfg.paths.output_dir == "./outputs"


def test_entry_point_smoke_and_user_error(tmp_path):
    cmd = [sys.executable, str(ROOT / "train_ann.py"), "train=smoke", "logger=none",
           f"paths.root_dir={tmp_path}"]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "outputs" / "smoke_checkpoints" / "digits_digits_cnn.pt").is_file()
    assert not (tmp_path / "checkpoints").exists()          # smoke never touches real checkpoints
    runs = list((tmp_path / "outputs" / "train" / "digits_digits_cnn").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.csv").is_file() and (runs[0] / "config.yaml").is_file()
    r = subprocess.run(cmd + ["train.epochs=0"], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: train.epochs must be >= 1, got 0"
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_ddp_two_processes_on_cpu(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train_ann.py"), "train.epochs=1",
           "logger=none", f"paths.root_dir={tmp_path}", "hydra.run.dir=" + str(tmp_path / "run"),
           "train.progress=false", "device=cpu"]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "checkpoints" / "digits_digits_cnn_last.pt")
    assert ck["epoch"] == 1 and len(ck["rng"]) == 2               # one RNG state per process
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "digits_digits_cnn.pt", "digits_digits_cnn_last.pt"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["test_acc"]) > 0.5     # eval counted over both shards
    # the all-reduced accuracy of the two test shards is the whole test set's, for the saved weights
    from msat.data import build_data, build_loader
    model = load_model_weights(create_model("digits_cnn"), ck)
    _, acc = evaluate(model, build_loader(build_data(ck["config"]["dataset"]).test, 512), torch.device("cpu"))
    assert float(rows[0]["test_acc"]) == pytest.approx(ck["test_acc"]) == pytest.approx(acc)


def test_multirun_with_local_launcher(tmp_path):
    cmd = [sys.executable, str(ROOT / "train_ann.py"), "-m", "hydra/launcher=local", "train=smoke",
           "logger=none", f"paths.root_dir={tmp_path}", "seed=0,1",
           "train.ckpt_path=${paths.output_dir}/smoke_checkpoints/s${seed}.pt"]    # parallel jobs: one each
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted((next((tmp_path / "outputs" / "multirun" / "train").iterdir())).glob("*_digits_digits_cnn"))
    assert [j.name for j in jobs] == ["0_digits_digits_cnn", "1_digits_digits_cnn"]
    assert all((j / "metrics.csv").is_file() for j in jobs)
    assert sorted(p.name for p in (tmp_path / "outputs" / "smoke_checkpoints").iterdir()) == [
        "s0.pt", "s0_last.pt", "s1.pt", "s1_last.pt"]


# ----------------------------------------------------------------------------- locks, one committed set, interrupts

QUICK = ("train.batch_size=64", "train.max_steps_per_epoch=2", "train.eval_batch_size=512")


def _committed(run: Path) -> dict:
    """summary.json of ``run``, after checking that it names every file of the set as it is now."""
    import hashlib

    summary = json.loads((run / "summary.json").read_text())
    assert sorted(summary["files"]) == ["config.yaml", "metrics.csv", "metrics.jsonl"]
    for name, sha in summary["files"].items():
        assert hashlib.sha256((run / name).read_bytes()).hexdigest() == sha, name
    return summary


def test_a_rerun_into_the_same_directory_replaces_the_set(tmp_path, monkeypatch):
    import msat.training

    run = tmp_path / "run"
    for epochs in (3, 2):                                         # no resume: the second run starts a fresh log
        res = train(make_cfg(tmp_path, f"train.epochs={epochs}", *QUICK), run_dir=run)
        lines = (run / "metrics.csv").read_text().splitlines()
        assert lines[0].startswith("step,epoch,") and [int(r["epoch"]) for r in csv.DictReader(lines)] == \
            list(range(1, epochs + 1))
        assert len((run / "metrics.jsonl").read_text().splitlines()) == epochs
        assert f"epochs: {epochs}" in (run / "config.yaml").read_text()
        assert _committed(run)["best_acc"] == res["best_acc"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [      # the lock file is gone
        "digits_digits_cnn.pt", "digits_digits_cnn_last.pt"]

    def killed(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(msat.training, "save_checkpoint", killed)   # a third run dies after its first epoch's row
    with pytest.raises(RuntimeError, match="killed"):
        train(make_cfg(tmp_path, "train.epochs=4", *QUICK), run_dir=run)
    assert not (run / "summary.json").exists()                   # no result, rather than files of two runs
    assert "epochs: 4" in (run / "config.yaml").read_text()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_second_training_into_a_locked_directory_or_checkpoint_is_refused(tmp_path):
    import re

    from msat.runs import CheckpointLock, RunLock

    with RunLock(tmp_path / "run"):
        with pytest.raises(UserError, match=re.escape(f"run directory {tmp_path / 'run'} is in use by another run "
                                                      f"(pid {os.getpid()}")):
            train(make_cfg(tmp_path, "train.epochs=1", *QUICK), run_dir=tmp_path / "run")
    ckpt = tmp_path / "checkpoints" / "digits_digits_cnn.pt"
    with CheckpointLock(ckpt):
        with pytest.raises(UserError, match=re.escape(f"checkpoint {ckpt} is in use by another training "
                                                      f"(pid {os.getpid()}")):
            train(make_cfg(tmp_path, "train.epochs=1", *QUICK), run_dir=tmp_path / "other")
    assert not (tmp_path / "checkpoints").exists()               # the lock made the folder, and removed it
    assert not (tmp_path / "other" / "summary.json").exists()


def _signal_at_epoch(monkeypatch, k: int) -> None:
    """SIGTERM to this process as the k-th (1-based) call of train_one_epoch starts."""
    import signal

    import msat.training

    original, calls = getattr(msat.training.train_one_epoch, "__wrapped__", msat.training.train_one_epoch), []

    def wrapped(*a, **kw):
        calls.append(1)
        if len(calls) == k:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*a, **kw)

    wrapped.__wrapped__ = original
    monkeypatch.setattr(msat.training, "train_one_epoch", wrapped)


def test_interrupt_says_from_which_epoch_the_resume_starts(tmp_path, monkeypatch):
    from msat.utils import Interrupted

    last = tmp_path / "checkpoints" / "digits_digits_cnn_last.pt"
    _signal_at_epoch(monkeypatch, 2)
    with pytest.raises(Interrupted, match="stopped during epoch 2/3") as e:
        train(make_cfg(tmp_path, "train.epochs=3", *QUICK), run_dir=tmp_path / "a")
    assert e.value.exit_code == 143 and load_checkpoint(last)["epoch"] == 1
    assert f"{last} holds the state after epoch 1, so the resume starts at epoch 2; resume with: " in str(e.value)
    assert str(e.value).endswith("train.resume=true")
    # a new run (no resume) stopped in its first epoch: the _last.pt there is the earlier run's, not to continue
    _signal_at_epoch(monkeypatch, 1)
    with pytest.raises(Interrupted, match="stopped during epoch 1/3; no epoch was completed") as e:
        train(make_cfg(tmp_path, "train.epochs=3", *QUICK), run_dir=tmp_path / "b")
    assert f"nothing was saved ({last} is the state of another run" in str(e.value)
    assert "start again with: " in str(e.value) and str(e.value).endswith("train.resume=false")
    last.unlink()
    _signal_at_epoch(monkeypatch, 1)
    with pytest.raises(Interrupted, match="no epoch was completed, so nothing was saved and the resume starts at "
                                          "epoch 1; resume with: .*train.resume=true$"):
        train(make_cfg(tmp_path, "train.epochs=3", *QUICK), run_dir=tmp_path / "c")
