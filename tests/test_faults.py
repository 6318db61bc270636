"""Fault injection: the real entry points as subprocesses, fed bad input, killed, interrupted, starved of disk
space and run twice into one directory. Each case checks the exit code, one message line naming the bad
thing, no traceback, and that an earlier result in the same place is unchanged."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from msat.runs import load_run

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_DATASETS_OFFLINE="1")
    e.pop("WANDB_API_KEY", None)
    return e


def run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def one_line(r: subprocess.CompletedProcess, code: int = 2, prefix: str = "error: ") -> str:
    """The process exited with ``code`` and printed exactly one stderr line (no traceback)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    return lines[0]


def snapshot(run_dir: Path) -> dict:
    """The committed result of a run directory: its metrics and the hash of every file of its set."""
    result = load_run(run_dir)
    files = {n: hashlib.sha256((run_dir / n).read_bytes()).hexdigest() for n in [*result["files"], "metrics.json"]}
    return {"acc": result["acc"], "files": files}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A digits checkpoint (3 epochs), a committed evaluation (T=8) and a finished training run directory."""
    root = tmp_path_factory.mktemp("faults")
    ck, out = root / "ck", root / "out"
    r = run("train_ann.py", "logger=none", f"paths.ckpt_dir={ck}", f"paths.output_dir={out}", "train.epochs=3",
            f"hydra.run.dir={root / 'train'}")
    assert r.returncode == 0, r.stderr[-3000:]
    ev = root / "eval"
    r = run("convert_eval.py", "logger=none", f"paths.ckpt_dir={ck}", f"paths.output_dir={out}", "T=8",
            f"hydra.run.dir={ev}")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"root": root, "ck": ck, "out": out, "eval": ev, "snap": snapshot(ev)}


def eval_args(base: dict, *extra: str) -> list[str]:
    return ["logger=none", f"paths.ckpt_dir={base['ck']}", f"paths.output_dir={base['out']}",
            f"hydra.run.dir={base['eval']}", *extra]


# ----------------------------------------------------------------------------- refused before compute

BAD_EVAL = [
    (("report_T=512",), "report_T"),
    (("report_T=[0,4]",), r"report_T [0] outside 1..T=256"),
    (("seed=abc",), "seed"),
    (("sim.batch_size=0",), "sim.batch_size must be >= 1, got 0"),
    (("sim.chunk=0",), "sim.chunk must be >= 1, got 0"),
    (("+sim.chunck=8",), "unknown key sim.chunck; valid keys of sim: batch_size, chunk"),
    (("+model.kwargs.widht=16",), "widht"),
    (("neuron.alhpa=1",), "unknown key 'neuron.alhpa'; valid keys of neuron: use_dtt"),
    (("method=nope",), "unknown method option 'nope'; valid options: burst, cos, if_max"),
    (("neuron=msat",), "neuron is a group of keys"),
    (("+dataset.cutuot=8",), "unknown key dataset.cutuot"),
    (("T=1000000000",), "T=1000000000 needs about"),
    (("T=8", "method=msat_sc"), "sc.E=16, beyond T=8"),
    (("method=qcfs",), "method 'qcfs' converts a QCFS ANN; this model is a ReLU ANN"),
    (("model.kwargs.width=16",), "trained with another model than this config builds (model.kwargs.width"),
    (("dataset=synthetic_cifar", "model=vgg16"), "checkpoint not found"),
]


@pytest.mark.parametrize("args, message", BAD_EVAL, ids=[a[0] for a, _ in BAD_EVAL])
def test_bad_evaluation_input_is_one_line_and_keeps_the_earlier_result(base, args, message):
    line = one_line(run("convert_eval.py", *eval_args(base, *args)))
    assert message in line, line
    assert snapshot(base["eval"]) == base["snap"]


def test_bad_checkpoints_and_states(base, tmp_path):
    """A directory, a text file, a pickled list, NaN weights given as ckpt; a truncated and a foreign state."""
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    ck = torch.load(base["ck"] / "digits_digits_cnn.pt", weights_only=True)
    ck["model"]["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ck, tmp_path / "nan.pt")
    import datetime
    torch.save({"when": datetime.date(2026, 1, 1)}, tmp_path / "pickle.pt")    # refused by weights_only loading
    for ckpt, message in ((tmp_path, "is a directory"), (text, "is not a readable checkpoint"),
                          (tmp_path / "pickle.pt", "is not a readable checkpoint"),
                          (tmp_path / "list.pt", "holds no model weights"),
                          (tmp_path / "nan.pt", "features.0.weight hold NaN or inf")):
        line = one_line(run("convert_eval.py", *eval_args(base, f"ckpt={ckpt}")))
        assert message in line and "weights_only" not in line, line
    state_dir = tmp_path / "st"
    state_dir.mkdir()
    (state_dir / "eval_state.pt").write_bytes(b"\x80\x02truncated")
    line = one_line(run("convert_eval.py", *eval_args(base, "resume=true", f"hydra.run.dir={state_dir}")))
    assert "eval_state.pt is not a readable evaluation state" in line
    torch.save({"epoch": 3}, state_dir / "eval_state.pt")
    line = one_line(run("convert_eval.py", *eval_args(base, "resume=true", f"hydra.run.dir={state_dir}")))
    assert "is not an evaluation state of convert_eval.py" in line
    assert snapshot(base["eval"]) == base["snap"]


def test_bad_training_input(base, tmp_path):
    common = ["logger=none", f"paths.ckpt_dir={base['ck']}", f"paths.output_dir={tmp_path / 'out'}"]
    line = one_line(run("train_ann.py", *common, "dataset=synthetic_cifar"))
    assert "model 'digits_cnn' does not accept the input of dataset 'synthetic_cifar'" in line
    line = one_line(run("train_ann.py", *common, "+model.kwargs.widht=16"))
    assert "widht" in line
    line = one_line(run("train_ann.py", *common, "train.resume=true", "model=resnet20",
                        f"train.ckpt_path={base['ck'] / 'digits_digits_cnn.pt'}"))
    assert "holds model 'digits_cnn', this run builds 'resnet20'" in line
    line = one_line(run("train_ann.py", *common, "train.resume=true", "model.kwargs.width=16"))
    assert "holds model 'digits_cnn', this run builds 'digits_cnn' (kwargs:" in line
    line = one_line(run("train_ann.py", *common, "train.resume=true", "train.lr=0.05"))
    assert "train.lr: saved 0.1, now 0.05" in line
    bad = tmp_path / "imdb"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n{oops\n')
    (bad / "test.jsonl").write_text('{"text": "fine", "label": 0}\n')
    line = one_line(run("train_ann.py", *common, "dataset=imdb", "model=bilstm", f"dataset.root={bad}"))
    assert f"{bad / 'train.jsonl'}:3: not a JSON object" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())      # no run dirs left


def test_refused_runs_leave_no_run_directory(base, tmp_path):
    out = tmp_path / "out"
    for args in (("T=0",), ("sim.chunk=0",), ("paths.ckpt_dir=/nonexistent",)):
        one_line(run("convert_eval.py", "logger=none", f"paths.ckpt_dir={base['ck']}", f"paths.output_dir={out}", *args))
    one_line(run("train_ann.py", "logger=none", f"paths.output_dir={out}", "train.epochs=0"))
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


# ----------------------------------------------------------------------------- results never lost or mixed

def test_two_runs_into_one_directory(base, tmp_path):
    """The second run is refused in one line naming the first; the first completes alone."""
    d = tmp_path / "shared"
    first = start("convert_eval.py", *eval_args(base, "T=256", "sim.batch_size=16", f"hydra.run.dir={d}"))
    for _ in range(600):
        if (d / ".lock").is_file() and (d / ".lock").read_text():
            break
        time.sleep(0.05)
    second = run("convert_eval.py", *eval_args(base, "T=8", f"hydra.run.dir={d}"))
    line = one_line(second)
    assert f"run directory {d} is in use by another run (pid {first.pid}" in line
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert len(load_run(d)["acc"]) == 256


def test_rerun_into_the_same_directory_replaces_the_set(base, tmp_path):
    d = tmp_path / "again"
    for T in ("8", "8", "4"):
        r = run("convert_eval.py", *eval_args(base, f"T={T}", f"hydra.run.dir={d}"))
        assert r.returncode == 0, r.stderr[-2000:]
    result = load_run(d)                                           # every file is the last run's
    assert len(result["acc"]) == 4 and len((d / "metrics.jsonl").read_text().splitlines()) == 4
    assert len((d / "acc_curve.csv").read_text().splitlines()) == 5 and "T: 4" in (d / "config.yaml").read_text()


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave_kb: int) -> None:
    free = shutil.disk_usage(mnt).free
    with open(mnt / "fill", "wb") as f:
        f.write(b"\0" * max(free - leave_kb * 1024, 0))


def test_disk_full(base, tmpfs):
    """A full disk: one line naming the path and the space needed, exit 2, the previous result intact;
    W&B offline data that could not be written is reported."""
    d = tmpfs / "run"
    r = run("convert_eval.py", *eval_args(base, "T=8", f"hydra.run.dir={d}"))
    assert r.returncode == 0, r.stderr[-2000:]
    before = snapshot(d)
    _fill(tmpfs, 30)
    line = one_line(run("convert_eval.py", *eval_args(base, "T=16", f"hydra.run.dir={d}")))
    assert f"no space left on the device writing {d}" in line and "it needs about" in line
    assert "the previous result there is unchanged" in line and snapshot(d) == before
    r = run("convert_eval.py", *eval_args(base, "T=8", f"hydra.run.dir={tmpfs / 'wb'}", "logger=wandb"))
    assert r.returncode == 2 and "W&B offline data in" in r.stdout and "is incomplete" in r.stdout
    (tmpfs / "fill").unlink()
    _fill(tmpfs, 2)
    line = one_line(run("train_ann.py", "logger=none", f"paths.ckpt_dir={tmpfs / 'ck'}",
                        f"hydra.run.dir={tmpfs / 'tr'}", "train.epochs=1"))
    assert "no space left on the device writing" in line


# ----------------------------------------------------------------------------- kill -9 and signals

def _wait_for(path: Path, predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and predicate(path):
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode} {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {path}")


def test_kill9_during_training_resumes_bit_identically(base, tmp_path):
    """kill -9 at several points of a 6-epoch training; each resume continues from the last epoch saved, and
    the final weights equal an uninterrupted run's."""
    common = ["logger=none", "train.epochs=6", "train.progress=false"]
    straight = run("train_ann.py", *common, f"paths.ckpt_dir={tmp_path / 'a'}", f"hydra.run.dir={tmp_path / 'ra'}")
    assert straight.returncode == 0, straight.stderr[-2000:]
    ck, rd = tmp_path / "b", tmp_path / "rb"
    rng = random.Random(0)
    for epochs_seen in (1, 3, 4):                                     # kill after this many epoch rows
        p = start("train_ann.py", *common, f"paths.ckpt_dir={ck}", f"hydra.run.dir={rd}", "train.resume=true")
        _wait_for(rd / "metrics.jsonl", lambda f: len(f.read_text().splitlines()) >= epochs_seen, p)
        time.sleep(rng.uniform(0.0, 0.2))                             # somewhere inside the next epoch
        p.send_signal(signal.SIGKILL)
        p.wait()
    last = run("train_ann.py", *common, f"paths.ckpt_dir={ck}", f"hydra.run.dir={rd}", "train.resume=true")
    assert last.returncode == 0, last.stderr[-2000:]
    a = torch.load(tmp_path / "a" / "digits_digits_cnn_last.pt", weights_only=True)
    b = torch.load(ck / "digits_digits_cnn_last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows = [json.loads(line)["step"] for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5, 6]                                 # no epoch logged twice


def test_kill9_during_evaluation_resumes_to_the_same_numbers(base, tmp_path):
    args = eval_args(base, "T=32", "method=msat_sc", "sc.E=8", "sim.batch_size=32", "sim.checkpoint_every=1")
    straight = tmp_path / "straight"
    r = run("convert_eval.py", *args, f"hydra.run.dir={straight}")
    assert r.returncode == 0, r.stderr[-2000:]
    d = tmp_path / "killed"
    rng = random.Random(1)
    for batches in (2, 6, 9):
        p = start("convert_eval.py", *args, f"hydra.run.dir={d}", "resume=true")
        _wait_for(d / "eval_state.pt",
                  lambda f: torch.load(f, weights_only=True)["batches_done"] >= batches, p)
        time.sleep(rng.uniform(0.0, 0.1))
        p.send_signal(signal.SIGKILL)
        p.wait()
    r = run("convert_eval.py", *args, f"hydra.run.dir={d}", "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_run(straight), load_run(d)
    for key in ("acc", "counts", "layers", "sin_curve", "energy", "ann_acc"):
        assert a[key] == b[key], key
    assert b["timing"]["resumed_images"] > 0 and not (d / "eval_state.pt").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_saves_the_state_and_says_how_to_resume(base, tmp_path, sig):
    d = tmp_path / "int"
    args = eval_args(base, "T=256", "sim.batch_size=16", "sim.checkpoint_every=0", f"hydra.run.dir={d}")
    p = start("convert_eval.py", *args)
    _wait_for(d / ".lock", lambda f: f.stat().st_size > 0, p)
    time.sleep(2.5)                                                   # inside the batch loop
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert r.returncode == 128 + sig and "Traceback" not in err
    assert lines[-1].startswith("interrupted: ") and "resume with: python convert_eval.py" in lines[-1]
    assert (d / "eval_state.pt").is_file() and not (d / "metrics.json").exists()
    cmd = lines[-1].split("resume with: python ")[1].split()
    r = run(cmd[0], *cmd[1:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_run(d)["timing"]["resumed_images"] > 0


@pytest.mark.parametrize("when", ["before the first epoch", "after the first epoch"])
def test_training_honours_sigterm(base, tmp_path, when):
    """SIGTERM: one line saying in which epoch it stopped and from which epoch the resume starts (the steps of
    the epoch it stopped in are not saved); the printed command resumes to the weights of an uninterrupted run
    (the fixture's 3 epochs), each epoch logged once."""
    ck, rd = tmp_path / "ck", tmp_path / "rd"
    p = start("train_ann.py", "logger=none", "train.epochs=3", f"paths.ckpt_dir={ck}", f"hydra.run.dir={rd}",
              f"paths.output_dir={tmp_path / 'out'}")
    if when == "before the first epoch":                              # the run holds its directory
        _wait_for(rd / ".lock", lambda f: f.stat().st_size > 0, p)
    else:
        _wait_for(rd / "metrics.jsonl", lambda f: len(f.read_text().splitlines()) >= 1, p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert lines[-1].startswith("interrupted: SIGTERM: stopped during epoch "), lines[-1]
    stopped = int(lines[-1].split("stopped during epoch ")[1].split("/")[0])
    last = ck / "digits_digits_cnn_last.pt"
    if when == "before the first epoch":
        assert stopped == 1 and not last.exists()
        assert "no epoch was completed, so nothing was saved and the resume starts at epoch 1" in lines[-1]
    else:
        saved = torch.load(last, weights_only=True)["epoch"]
        assert stopped >= 2 and saved == stopped - 1, (lines[-1], saved)
        assert f"{last} holds the state after epoch {saved}, so the resume starts at epoch {stopped}" in lines[-1]
    cmd = lines[-1].split("resume with: python ")[1].split()
    assert "train.resume=true" in cmd and f"hydra.run.dir={rd}" in cmd
    r = run(cmd[0], *cmd[1:])
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(base["ck"] / "digits_digits_cnn_last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [json.loads(line)["step"] for line in (rd / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_two_trainings_into_one_directory_or_checkpoint(base, tmp_path):
    """A second training into the directory, or onto the checkpoint, of a running one is refused in one line
    naming it; the first completes alone and commits its set."""
    ck, d = tmp_path / "ck", tmp_path / "shared"
    common = ["logger=none", "train.progress=false", f"paths.ckpt_dir={ck}",
              f"paths.output_dir={tmp_path / 'out'}"]
    first = start("train_ann.py", *common, "train.epochs=40", f"hydra.run.dir={d}")
    _wait_for(d / ".lock", lambda f: f.stat().st_size > 0, first)
    second = start("train_ann.py", *common, "train.epochs=2", f"hydra.run.dir={d}")
    third = start("train_ann.py", *common, "train.epochs=2", f"hydra.run.dir={tmp_path / 'other'}")
    for p, message in ((second, f"run directory {d} is in use by another run (pid {first.pid}"),
                       (third, f"checkpoint {ck / 'digits_digits_cnn.pt'} is in use by another training "
                               f"(pid {first.pid}")):
        out, err = p.communicate(timeout=300)
        line = one_line(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        assert message in line, line
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["epochs_done"] == 40 and len((d / "metrics.jsonl").read_text().splitlines()) == 40
    assert summary["files"]["metrics.jsonl"] == hashlib.sha256((d / "metrics.jsonl").read_bytes()).hexdigest()
    assert not (tmp_path / "other").exists() and not (ck / "digits_digits_cnn.pt.lock").exists()
