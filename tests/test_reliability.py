"""Reliability, round two: results edited after their run committed them, two multiruns into one sweep
directory, devices and checkpoint paths that are not there, the package's listing functions, the library's
input errors in ``msat.simulate`` / ``msat.convert``; custom models that cannot be built or give no logits, paths
that cannot be written, numbers torch cannot take, degenerate splits, multiruns checked up front and reporting
failed jobs, what a run prints and logs, SIGTERM during calibration, reproduce's quiet jobs. Command-line cases
run the real entry points: exit code 2, exactly one ``error:`` line, no traceback, nothing left behind."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import msat
from experiments import reproduce
from experiments.reproduce import error_lines, run_cmd
from helpers import train_digits
from msat.cli import SWEEP_LOCK_OVERRIDE, with_sweep_lock
from msat.conversion import ConversionError
from msat.runs import (CheckpointLock, Staging, SweepLock, checkpoint_writer, commit_in_place, load_run,
                       wait_for_checkpoint)
from msat.simulation import SimulationError
from msat.training import ProgressLog
from msat.utils import UserError, resolve_device

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_DATASETS_OFFLINE="1")
    e.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=e, capture_output=True, text=True,
                          timeout=timeout)


def one_line(r: subprocess.CompletedProcess) -> str:
    """Exit code 2 and exactly one stderr line, ``error: ...``, no traceback."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def empty(path: Path) -> bool:
    return not path.exists() or not any(path.rglob("*"))


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    """A digits_cnn checkpoint of one short epoch (train_ann.py's code path, in process)."""
    d = tmp_path_factory.mktemp("ckpt")
    assert train_digits(d).is_file()
    return d


# ----------------------------------------------------------------------------- A: results verified on read

def committed(run_dir: Path) -> Path:
    """A committed set (two files and metrics.json), as convert_eval commits one."""
    with Staging(run_dir) as st:
        st.path("acc_curve.csv").write_text("t,acc\n1,0.5\n2,0.75\n")
        st.path("plots").mkdir()
        st.path("plots/a.png").write_bytes(b"\x89PNG fake")
        st.commit({"acc": [0.5, 0.75], "ann_acc": 0.8, "config": {"T": 2, "path": Path("/x")},
                   "layers": [{"name": "l1", "scale": np.float32(1.5)}]})
    return run_dir


def _edit(mutate):
    def apply(d: Path) -> None:
        m = json.loads((d / "metrics.json").read_text())
        mutate(m)
        (d / "metrics.json").write_text(json.dumps(m, indent=2))
    return apply


TAMPERED = {
    "a metric edited": (_edit(lambda m: m["acc"].__setitem__(1, 0.99)), "metrics.json was edited after the run"),
    "a key added": (_edit(lambda m: m.__setitem__("note", "better")), "metrics.json was edited after the run"),
    "files removed": (_edit(lambda m: m.pop("files")), "metrics.json has no files entry"),
    "files a list": (_edit(lambda m: m.__setitem__("files", sorted(m["files"]))),
                     "metrics.json has a files entry that is not a mapping"),
    "files with a number": (_edit(lambda m: m["files"].__setitem__("acc_curve.csv", 7)),
                            "metrics.json has a files entry that is not a mapping"),
    "a file outside": (_edit(lambda m: m["files"].__setitem__("../other/metrics.json", "0" * 64)),
                       "metrics.json has a files entry that is not a mapping"),
    "signature removed": (_edit(lambda m: m.pop("signature")), "metrics.json carries no signature"),
    "signature forged": (_edit(lambda m: m.__setitem__("signature", "sha256:" + "0" * 64)),
                         "metrics.json was edited after the run"),
    "a JSON list": (lambda d: (d / "metrics.json").write_text("[0.5, 0.75]\n"),
                    "metrics.json is not a result of a run (a JSON list, not an object)"),
    "a JSON number": (lambda d: (d / "metrics.json").write_text("0.75\n"),
                      "metrics.json is not a result of a run (a JSON float"),
    "not JSON": (lambda d: (d / "metrics.json").write_text('{"acc": [0.5,'), "metrics.json is not a readable result"),
    "not UTF-8": (lambda d: (d / "metrics.json").write_bytes(b"\xff\xfe{}"), "metrics.json is not a readable result"),
    "truncated": (lambda d: (d / "metrics.json").write_bytes((d / "metrics.json").read_bytes()[:40]),
                  "metrics.json is not a readable result"),
    "a directory": (lambda d: ((d / "metrics.json").unlink(), (d / "metrics.json").mkdir()),
                    "metrics.json is a directory, not a result file"),
    "a listed file missing": (lambda d: (d / "acc_curve.csv").unlink(),
                              "acc_curve.csv is missing, but"),
    "a listed file altered": (lambda d: (d / "plots" / "a.png").write_bytes(b"other"),
                              "a.png was changed after the run committed it"),
    "a listed file replaced by a directory": (lambda d: ((d / "acc_curve.csv").unlink(), (d / "acc_curve.csv").mkdir()),
                                              "acc_curve.csv is a directory, but"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_load_run_refuses_a_result_changed_after_its_commit(tmp_path, case):
    d = committed(tmp_path / "run")
    assert load_run(d)["acc"] == [0.5, 0.75]
    tamper, message = TAMPERED[case]
    tamper(d)
    with pytest.raises(UserError) as e:
        load_run(d)
    text = str(e.value)
    assert message in text and "\n" not in text, text
    assert str(d) in text                                            # names the file (or the run's folder)


def test_signed_results_load_and_survive_reformatting(tmp_path):
    d = committed(tmp_path / "run")
    on_disk = json.loads((d / "metrics.json").read_text())
    assert on_disk["signature"].startswith("sha256:") and set(on_disk["files"]) == {"acc_curve.csv", "plots/a.png"}
    assert on_disk["config"]["path"] == "/x" and on_disk["layers"][0]["scale"] == "1.5"    # as JSON stores them
    (d / "metrics.json").write_text(json.dumps(on_disk, sort_keys=True))                 # the layout only
    assert load_run(d) == on_disk
    summary = commit_in_place(d, ["acc_curve.csv"], {"epochs_done": 3})                  # training's marker
    assert json.loads((d / "summary.json").read_text())["signature"] == summary["signature"]


def test_commit_over_a_damaged_result_replaces_it_and_touches_nothing_outside(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    d = committed(tmp_path / "run")
    for damaged in ("[1, 2]", json.dumps({"files": {"../precious.txt": "0", "plots": "0"}}), "{oops"):
        (d / "metrics.json").write_text(damaged)
        committed(d)
        assert load_run(d)["acc"] == [0.5, 0.75] and outside.read_text() == "keep"


# ----------------------------------------------------------------------------- B: one multirun per sweep directory

def test_with_sweep_lock_keeps_the_overrides_together():
    cb = SWEEP_LOCK_OVERRIDE
    assert with_sweep_lock(["x.py"]) == ["x.py", cb]
    assert with_sweep_lock(["x.py", "-m", "T=4,8", "seed=1"]) == ["x.py", "-m", "T=4,8", "seed=1", cb]
    assert with_sweep_lock(["x.py", "T=4", "--cfg", "job"]) == ["x.py", "T=4", cb, "--cfg", "job"]
    assert with_sweep_lock(["x.py", "--info"]) == ["x.py", cb, "--info"]
    assert with_sweep_lock(["x.py", "T=4", "-m", "seed=1"]) == ["x.py", "T=4", "-m", "seed=1"]    # Hydra's error


def test_second_multirun_into_a_held_sweep_directory_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    with SweepLock(sweep):                                           # the first multirun, still launching jobs
        before = sorted(p.name for p in sweep.iterdir())
        line = one_line(run("convert_eval.py", "-m", "logger=none", f"paths.output_dir={tmp_path / 'out'}",
                            f"paths.ckpt_dir={tmp_path / 'ck'}", f"hydra.sweep.dir={sweep}", "T=4,8"))
        assert line.startswith(f"error: sweep directory {sweep} is in use by another multirun (pid {os.getpid()}")
        assert "choose another hydra.sweep.dir" in line
        assert sorted(p.name for p in sweep.iterdir()) == before == [".lock"]      # no multirun.yaml, no job dir
    assert empty(tmp_path / "out") and empty(tmp_path / "ck")


def test_a_multirun_holds_its_sweep_directory_while_it_runs(ckpt_dir, tmp_path):
    sweep = tmp_path / "sweep"
    r = run("convert_eval.py", "--multirun", "logger=none", "sim.progress=false", f"paths.ckpt_dir={ckpt_dir}",
            f"paths.output_dir={tmp_path / 'out'}", f"hydra.sweep.dir={sweep}", "T=4")
    assert r.returncode == 0, r.stderr[-3000:]
    note = json.loads((sweep / ".lock").read_text())
    assert note["command"].startswith("convert_eval.py --multirun") and SWEEP_LOCK_OVERRIDE not in note["command"]
    assert len(load_run(sweep / "0")["acc"]) == 4
    with SweepLock(sweep):                                           # released when the sweep ended
        pass


# ----------------------------------------------------------------------------- C: devices this machine lacks

def _missing_devices() -> list[str]:
    out = [f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 3}", "xpu"]
    if not torch.cuda.is_available():
        out.append("cuda")
    if not torch.backends.mps.is_available():
        out.append("mps")
    return out


@pytest.mark.parametrize("device", _missing_devices())
def test_a_device_that_does_not_exist_is_refused_before_any_compute(tmp_path, device):
    """Refused before the checkpoint is even looked for (none exists here), so before any compute."""
    line = one_line(run("convert_eval.py", "logger=none", f"device={device}", f"paths.ckpt_dir={tmp_path / 'ck'}",
                        f"paths.output_dir={tmp_path / 'out'}", "T=4"))
    assert line.startswith(f"error: device {device!r}") and ("not available" in line or "CUDA device" in line
                                                            or "not supported" in line), line
    assert "checkpoint" not in line and empty(tmp_path / "out")
    with pytest.raises(UserError):
        resolve_device(device)


def test_training_refuses_a_missing_device(tmp_path):
    line = one_line(run("train_ann.py", "logger=none", "device=mps" if not torch.backends.mps.is_available()
                        else "device=xpu", f"paths.ckpt_dir={tmp_path / 'ck'}", f"paths.output_dir={tmp_path / 'out'}"))
    assert "device" in line and empty(tmp_path / "out") and empty(tmp_path / "ck")


# ----------------------------------------------------------------------------- D: checkpoints that are not files

def _not_a_file(kind: str, tmp: Path) -> tuple[Path, str]:
    if kind == "/dev/null":
        return Path("/dev/null"), "is a character device, not a checkpoint file"
    if kind == "fifo":
        os.mkfifo(tmp / "pipe.pt")
        return tmp / "pipe.pt", "is a named pipe (FIFO), not a checkpoint file"
    if kind == "dangling link":
        os.symlink(tmp / "gone.pt", tmp / "link.pt")
        return tmp / "link.pt", f"is a symbolic link to {tmp / 'gone.pt'}, which does not exist"
    (tmp / "empty.pt").write_bytes(b"")
    return tmp / "empty.pt", "is empty (0 bytes"


@pytest.mark.parametrize("kind", ["/dev/null", "fifo", "dangling link", "empty"])
def test_a_checkpoint_that_is_not_a_regular_file_says_what_it_is(tmp_path, kind):
    path, message = _not_a_file(kind, tmp_path)
    line = one_line(run("convert_eval.py", "logger=none", f"ckpt={path}", f"paths.output_dir={tmp_path / 'out'}",
                        "T=4"))
    assert line.startswith(f"error: checkpoint {path} {message}") and "not found" not in line, line
    assert empty(tmp_path / "out")


def test_training_refuses_a_checkpoint_path_that_is_not_a_file(tmp_path):
    line = one_line(run("train_ann.py", "logger=none", "train.ckpt_path=/dev/null", f"paths.output_dir={tmp_path}"))
    assert "checkpoint path /dev/null is a character device, not a file training can write" in line
    assert empty(tmp_path)
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(UserError, match="is a named pipe"):
        CheckpointLock(tmp_path / "pipe.pt").__enter__()
    (tmp_path / "model_last.pt").mkdir()                             # the resume state beside it
    with pytest.raises(UserError, match="model_last.pt is a directory, not a file training can write"):
        CheckpointLock(tmp_path / "model.pt").__enter__()
    with pytest.raises(UserError, match="cannot write checkpoint /proc/x.pt"):
        CheckpointLock("/proc/x.pt").__enter__()


def test_evaluation_never_reads_a_checkpoint_a_training_is_writing(ckpt_dir, tmp_path):
    # A training holds <ckpt>.lock while it runs: a reader waits briefly for it, then refuses naming that run.
    ckpt = ckpt_dir / "digits_digits_cnn.pt"
    lock = CheckpointLock(ckpt).__enter__()
    try:
        assert f"pid {os.getpid()} on " in checkpoint_writer(ckpt)
        t0 = time.monotonic()
        with pytest.raises(UserError, match=f"is being written by a training run \\(pid {os.getpid()} on "):
            wait_for_checkpoint(ckpt, timeout=0.3)
        assert time.monotonic() - t0 >= 0.3
        line = one_line(run("convert_eval.py", "logger=none", f"ckpt={ckpt}", "T=4", f"hydra.run.dir={tmp_path / 'r'}"))
        assert line.startswith(f"error: checkpoint {ckpt} is being written by a training run (pid {os.getpid()} on ")
        assert not (tmp_path / "r").exists()
        ends = threading.Timer(0.5, lock.__exit__)                         # the training ends while the reader waits
        ends.start()
        wait_for_checkpoint(ckpt, timeout=5)
        ends.join()
    finally:
        lock.__exit__()
    assert checkpoint_writer(ckpt) is None and not (ckpt_dir / "digits_digits_cnn.pt.lock").exists()


# ----------------------------------------------------------------------------- E: the package's listings

def test_listing_functions_at_package_level():
    from msat.data import list_datasets
    from msat.methods import list_methods
    from msat.models import list_models

    assert msat.list_methods() == list_methods() and {"msat", "if_max", "msat_sc"} <= set(msat.list_methods())
    assert msat.list_methods("msat*")[0] == "msat" and msat.list_models() == list_models()
    assert msat.list_datasets() == list_datasets() and "digits" in msat.list_datasets()
    assert msat.get_method("msat").name == "msat"
    assert {"list_methods", "list_models", "list_datasets", "get_method"} <= set(msat.__all__)


# ----------------------------------------------------------------------------- F: library input errors

@pytest.fixture(scope="module")
def snn():
    torch.manual_seed(0)
    model = msat.create_model("digits_cnn").eval()
    return msat.convert(model, torch.rand(16, 1, 8, 8), {"method": "msat"})


X = torch.rand(4, 1, 8, 8)
BAD_SIMULATE = {
    "unbatched": ((X[0], 4), {}, "x has shape (1, 8, 8) (3 dims), but this network takes 4-dim batches (B, 1, 8, 8)"),
    "too many dims": ((X[None], 4), {}, "(5 dims), but this network takes 4-dim batches"),
    "int": (((X * 10).long(), 4), {}, "x is torch.int64, but this network takes inputs of its parameters' dtype "
                                      "(torch.float32)"),
    "bool": ((X > 0.5, 4), {}, "x is torch.bool, but this network takes"),
    "float16": ((X.half(), 4), {}, "x is torch.float16, but this network takes"),
    "float64": ((X.double(), 4), {}, "x is torch.float64, but this network takes"),
    "not a tensor": ((X.tolist(), 4), {}, "x must be a torch.Tensor batch (B, ...), got list"),
    "empty batch": ((X[:0], 4), {}, "x must be a non-empty batch"),
    "NaN": ((X.clone().fill_(float("nan")), 4), {}, "x holds NaN or inf"),
    "generator int": ((X, 4), {"generator": 0}, "generator must be a torch.Generator"),
    "generator seed string": ((X, 4), {"generator": "seed"}, "generator must be a torch.Generator"),
    "generator numpy": ((X, 4), {"generator": np.random.default_rng(0)}, "generator must be a torch.Generator"),
    "T zero": ((X, 0), {}, "T must be a positive integer, got 0"),
    "T negative": ((X, -3), {}, "T must be a positive integer, got -3"),
    "T float": ((X, 4.0), {}, "T must be a positive integer, got 4.0 (float)"),
    "T bool": ((X, True), {}, "T must be a positive integer, got True"),
    "T string": ((X, "8"), {}, "T must be a positive integer, got '8'"),
    "observer not in a list": ((X, 4), {"observers": msat.Observer()}, "observers must be a list or tuple"),
    "observer without hooks": ((X, 4), {"observers": [object()]}, "observer object lacks on_batch_start"),
    "an output that cannot fit": ((X, 10 ** 12), {}, "GiB for the (T, B, 10) output, more than the"),
}


@pytest.mark.parametrize("case", list(BAD_SIMULATE))
def test_simulate_input_errors_are_one_sentence(snn, case):
    args, kwargs, message = BAD_SIMULATE[case]
    with pytest.raises(SimulationError) as e:
        msat.simulate(snn, *args, **kwargs)
    assert isinstance(e.value, UserError) and message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_simulate_accepts_what_the_network_takes(snn):
    assert msat.simulate(snn, X, 3, generator=torch.Generator().manual_seed(0), observers=[]).shape == (3, 4, 10)
    assert msat.simulate(copy.deepcopy(snn).double(), X.double(), 3).dtype == torch.float64   # cast after converting

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc, self.out = nn.Embedding(20, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(self.emb(x).mean(1))))

    tokens = torch.randint(0, 20, (5, 7))
    net = msat.convert(Tokens().eval(), tokens, {})
    assert msat.simulate(net, tokens.int(), 2).shape == (2, 5, 2)                          # any integer ids
    with pytest.raises(SimulationError, match=r"x is torch.float32, but this network takes integer inputs \(token "
                                              r"ids, torch.int64\)"):
        msat.simulate(net, tokens.float(), 2)
    with pytest.raises(ConversionError, match="the model cannot run on the calibration data .* IndexError: index "
                                              "out of range"):
        msat.convert(Tokens().eval(), tokens + 100, {})


CALIB = torch.rand(8, 1, 8, 8)
BAD_CALIB = {
    "NaN": (CALIB.clone().index_fill_(0, torch.tensor([3]), float("nan")), "calibration batch 0 holds NaN or inf"),
    "inf in the second batch": ([CALIB, CALIB.clone().fill_(float("inf"))], "calibration batch 1 holds NaN or inf"),
    "float16": (CALIB.half(), "calibration batch 0 is torch.float16, but the model's parameters are torch.float32"),
    "float64": (CALIB.double(), "calibration batch 0 is torch.float64, but the model's parameters are torch.float32"),
    "int": ((CALIB * 10).long(), "the model cannot run on the calibration data (batch 0: torch.int64"),
    "bool": (CALIB > 0.5, "calibration batch 0 is torch.bool"),
    "unbatched": (CALIB[0], "the model cannot run on the calibration data (batch 0: torch.float32, shape (1, 8, 8); "
                            "a batch (B, ...) of the model's input is expected)"),
    "0-dim": (torch.tensor(1.0), "calibration batch 0 is a 0-dim tensor, not a batch"),
    "numpy": (CALIB.numpy(), "calibration batch 0 must be a tensor or an (x, y) pair, got ndarray (convert it with "
                             "torch.from_numpy)"),
    "nested lists": (CALIB.tolist(), "calibration batch 0 must be a tensor or an (x, y) pair, got list"),
    "a number": (3.0, "calibration data must be a tensor batch (B, ...) or an iterable of batches"),
    "a string": ("calib", "calibration data must be a tensor batch"),
    "mixed batches": ([CALIB, CALIB[:, 0]], "calibration batch 1 is torch.float32 of shape (8, 8, 8), but batch 0"),
    "empty": ([], "the calibration set is empty"),
}


@pytest.mark.parametrize("case", list(BAD_CALIB))
def test_convert_calibration_errors_are_one_sentence(case):
    calib, message = BAD_CALIB[case]
    model = msat.create_model("digits_cnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConversionError) as e:
        msat.convert(model, calib, {"calib": {"batches": 2}})
    assert isinstance(e.value, UserError) and message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # untouched


def test_convert_reads_an_iterator_of_batches_once():
    model = msat.create_model("digits_cnn").eval()
    batches = iter([(CALIB, torch.zeros(8)), (CALIB.flip(0), torch.zeros(8)), (CALIB + 1, torch.zeros(8))])
    snn = msat.convert(model, batches, {"calib": {"batches": 2}})
    assert snn.cost.calib_images == 16 and next(batches)[0].equal(CALIB + 1)


# ----------------------------------------------------------------------------- G: refused before any compute

def nothing_left(tmp_path: Path, *keep: str) -> bool:
    """``tmp_path`` holds nothing but ``keep`` (the files a test made itself)."""
    return sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


CUSTOM_TARGETS = [
    ("train_ann.py", ("model._target_=nosuch.mod.Net",),
     "error: model._target_='nosuch.mod.Net': there is no module 'nosuch'"),
    ("convert_eval.py", ("model._target_=msat.models.NoSuch",),
     "error: model._target_='msat.models.NoSuch': msat.models has no attribute 'NoSuch'"),
    ("train_ann.py", ("model._target_=torch.nn.Flatten",),
     "error: model 'custom' returns shape (1, 64) for a batch of 1, not the logits (1, 10); dataset 'digits' has "
     "10 classes"),
    ("train_ann.py", ("model._target_=torch.nn.AdaptiveMaxPool2d", "+model.kwargs.output_size=1",
                      "+model.kwargs.return_indices=true"),
     "error: model 'custom' returns a tuple of 2, not one tensor of logits (1, 10)"),
    ("convert_eval.py", ("model._target_=torch.nn.Linear", "+model.kwargs.in_features=8", "+model.kwargs.out_features=5"),
     "error: model 'custom' returns shape (1, 1, 8, 5) for a batch of 1, not the logits (1, 10)"),
]


@pytest.mark.parametrize("script, args, message", CUSTOM_TARGETS, ids=[a[0] for _, a, _ in CUSTOM_TARGETS])
def test_a_custom_model_that_cannot_be_built_or_gives_no_logits(tmp_path, script, args, message):
    torch.save(nn.Linear(8, 5).state_dict(), tmp_path / "linear.pt")          # a bare state dict: no model spec
    extra = [f"ckpt={tmp_path / 'linear.pt'}", "T=4"] if script == "convert_eval.py" else ["train.epochs=1"]
    line = one_line(run(script, "logger=none", "model=custom", *args, *extra, f"paths.output_dir={tmp_path / 'out'}",
                        f"paths.ckpt_dir={tmp_path / 'ck'}"))
    assert line.startswith(message), line
    assert nothing_left(tmp_path, "linear.pt")


def _unwritable(kind: str, tmp: Path) -> tuple[str, list[str], str]:
    (tmp / "a_file").write_text("x")
    return {
        "output dir in /proc": ("convert_eval.py", ["paths.output_dir=/proc/msat_x"],
                                "error: cannot create the run directory /proc/msat_x/convert_eval/convert_eval/"),
        "run dir under a file": ("convert_eval.py", [f"hydra.run.dir={tmp / 'a_file' / 'x'}"],
                                 f"error: cannot create the run directory {tmp / 'a_file' / 'x'}: {tmp / 'a_file'} is "
                                 "a regular file, not a directory"),
        "training run dir under a file": ("train_ann.py", [f"hydra.run.dir={tmp / 'a_file' / 'x'}"],
                                          "error: cannot create the run directory"),
        "ckpt_path a directory": ("train_ann.py", [f"train.ckpt_path={tmp}"],
                                  f"error: checkpoint path {tmp} is a directory, not a file training can write"),
        "ckpt dir in /proc": ("train_ann.py", ["paths.ckpt_dir=/proc/msat_ck"],
                              "error: cannot write checkpoint /proc/msat_ck/digits_digits_cnn.pt: /proc takes no new"),
        "name up and out": ("convert_eval.py", ["name=../../x"], "error: name='../../x' is not a plain run name"),
        "absolute name": ("convert_eval.py", [f"name={tmp / 'abs'}"], f"error: name='{tmp / 'abs'}' is not a plain"),
    }[kind]


@pytest.mark.parametrize("kind", ["output dir in /proc", "run dir under a file", "training run dir under a file",
                                  "ckpt_path a directory", "ckpt dir in /proc", "name up and out", "absolute name"])
def test_paths_that_cannot_be_written_are_refused_before_anything_is_made(ckpt_dir, tmp_path, kind):
    script, args, message = _unwritable(kind, tmp_path)
    line = one_line(run(script, "logger=none", f"paths.ckpt_dir={ckpt_dir}", f"paths.output_dir={tmp_path / 'out'}",
                        "T=4" if script == "convert_eval.py" else "train.epochs=1", *args))
    assert line.startswith(message), line
    assert nothing_left(tmp_path, "a_file") and not Path("/proc/msat_x").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_directory_is_refused(ckpt_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    line = one_line(run("convert_eval.py", "logger=none", f"paths.ckpt_dir={ckpt_dir}", f"paths.output_dir={ro / 'x'}"))
    assert "takes no new folders (permission denied)" in line and not any(ro.iterdir())


NUMBERS = [
    ("convert_eval.py", "seed=18446744073709551616", "error: seed=18446744073709551616 is outside 0..4294967295"),
    ("train_ann.py", "seed=-1", "error: seed=-1 is outside 0..4294967295"),
    ("train_ann.py", "dataset.test_fraction=1.0", "error: dataset.test_fraction=1.0 leaves 0 training images of "
                                                  "digits' 1797"),
    ("convert_eval.py", "dataset.test_fraction=0.0", "error: dataset.test_fraction=0.0 leaves 0 test images"),
    ("train_ann.py", "dataset.n_train=0", "error: dataset.n_train=0: the training split of synthetic_digits would be "
                                          "empty"),
]


@pytest.mark.parametrize("script, arg, message", NUMBERS, ids=[a for _, a, _ in NUMBERS])
def test_numbers_python_or_torch_cannot_take(tmp_path, script, arg, message):
    data = ["dataset=synthetic_digits"] if "n_train" in arg else []
    line = one_line(run(script, "logger=none", f"paths.ckpt_dir={tmp_path / 'ck'}", f"paths.output_dir={tmp_path}",
                        *data, arg))
    assert line.startswith(message), line
    assert nothing_left(tmp_path)


# ----------------------------------------------------------------------------- H: multiruns

@pytest.mark.parametrize("sweep, message", [
    (("ckpt=/nope1,/nope2",), "error: job 0 of 2 (ckpt=/nope1): checkpoint not found: /nope1"),
    (("method=msat,nosuch",), "unknown method option 'nosuch'"),
    (("T=4", "seed=0,18446744073709551616"), "error: job 1 of 2 (seed=18446744073709551616): seed="),
])
def test_every_job_of_a_multirun_is_checked_before_the_first_starts(ckpt_dir, tmp_path, sweep, message):
    sweep_dir = tmp_path / "sweep"
    line = one_line(run("convert_eval.py", "-m", "logger=none", f"paths.ckpt_dir={ckpt_dir}",
                        f"paths.output_dir={tmp_path / 'out'}", f"hydra.sweep.dir={sweep_dir}", *sweep))
    assert message in line, line
    assert nothing_left(tmp_path)                                   # no sweep directory, no job folder


def test_a_job_that_fails_at_run_time_does_not_stop_the_others(ckpt_dir, tmp_path):
    """A checkpoint that is a file but not a checkpoint passes the checks up front and fails in its job: the other
    job completes, the sweep ends with its table (stdout) and one line per failed job (stderr), exit 2."""
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    good = ckpt_dir / "digits_digits_cnn.pt"
    sweep = tmp_path / "sweep"
    r = run("convert_eval.py", "-m", "logger=none", "sim.progress=false", f"paths.output_dir={tmp_path / 'out'}",
            f"hydra.sweep.dir={sweep}", "T=4", f"ckpt={bad},{good}")
    line = one_line(r)
    assert line.startswith(f"error: job 0 (ckpt={bad}) failed: {bad} is not a readable checkpoint"), line
    assert line.endswith(f"(log: {sweep / '0' / 'convert_eval.log'})")
    acc = load_run(sweep / "1")["acc"][-1]
    table = r.stdout[r.stdout.index(f"multirun {sweep}: 2 jobs, 1 failed"):].splitlines()
    assert table[1].split() == ["job", "overrides", "acc@T4"]
    assert table[2].split()[0] == "0" and table[2].split()[1].endswith("/notes.pt") and table[2].endswith("failed")
    assert table[3].split()[0] == "1" and table[3].split()[1].endswith("/digits_digits_cnn.pt")
    assert table[3].endswith(f"{100 * acc:.2f} %")
    assert not (sweep / ".msat_jobs.jsonl").exists()
    with SweepLock(sweep):                                           # released at the end
        pass


# ----------------------------------------------------------------------------- I: what a run says

def test_a_run_says_what_it_does_and_logs_progress_off_a_terminal(ckpt_dir, tmp_path):
    d = tmp_path / "run"
    r = run("convert_eval.py", "logger=none", f"paths.ckpt_dir={ckpt_dir}", f"hydra.run.dir={d}", "T=4")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == f"convert_eval: method msat, model digits_cnn, dataset digits, T=4; run dir {d}"
    m = load_run(d)
    assert lines[-1].startswith(f"convert_eval: ANN {100 * m['ann_acc']:.2f} %, SNN {100 * m['acc'][-1]:.2f} % at "
                                f"T=4, lossless ") and lines[-1].endswith(f"files in {d} (metrics.json, acc_curve.csv, "
                                                                          "plots)")
    assert any(line.startswith("| 4 |") for line in lines)         # the per-T table is still there
    progress = [line for line in (d / "convert_eval.log").read_text().splitlines() if "simulate T=4:" in line]
    assert progress and "[msat.evaluate][INFO] - simulate T=4: 450/450 images (100 %), " in progress[-1]
    assert all("images/s" in line and line.endswith(" left") for line in progress)


def test_training_ends_with_its_best_epoch_and_checkpoint(tmp_path):
    r = run("train_ann.py", "logger=none", "train.epochs=2", f"paths.ckpt_dir={tmp_path / 'ck'}",
            f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    ckpt = torch.load(tmp_path / "ck" / "digits_digits_cnn.pt", weights_only=True)
    assert r.stdout.splitlines()[-1] == (f"train_ann: best test accuracy {100 * summary['best_acc']:.2f} % at epoch "
                                         f"{ckpt['epoch']}; checkpoint {tmp_path / 'ck' / 'digits_digits_cnn.pt'}; "
                                         f"run dir {tmp_path / 'run'}")
    assert summary["best_epoch"] == ckpt["epoch"] == ckpt["best_epoch"]


def test_progress_log_lines(caplog):
    caplog.set_level("INFO", logger="msat.training")
    p = ProgressLog(450, "simulate T=8", "images", done=128)
    for _ in range(3):
        p.update(100)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" images (")[0] for line in lines] == ["simulate T=8: 228/450", "simulate T=8: 328/450",
                                                                "simulate T=8: 428/450"]
    assert all("images/s" in line and line.endswith(" left") for line in lines)
    caplog.clear()
    quiet = ProgressLog(10, "epoch 1/3", "batches", min_seconds=30.0)
    for _ in range(10):
        quiet.update(1)
    assert not caplog.records                                         # short work stays quiet


def test_sigterm_during_a_long_calibration_stops_within_a_second(ckpt_dir, tmp_path):
    d = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "convert_eval.py", "logger=none", f"paths.ckpt_dir={ckpt_dir}", "T=8",
                          "method=snn_calib_advanced", "method.calib_T=4096", f"hydra.run.dir={d}"], cwd=REPO,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    t0 = time.time()
    while not ((d / ".lock").is_file() and (d / ".lock").stat().st_size > 0):
        assert p.poll() is None and time.time() - t0 < 120, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.02)
    time.sleep(1.0)                                                   # inside the calibration
    p.send_signal(signal.SIGTERM)
    t1 = time.time()
    out, err = p.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert time.time() - t1 < 3.0                                    # about a second (a loaded machine: some slack)
    assert lines[-1].startswith("interrupted: SIGTERM: stopped while "), lines[-1]
    assert "before the first test batch, so nothing was saved; resume with: python convert_eval.py" in lines[-1]
    assert f"resume=true hydra.run.dir={d}" in lines[-1] and not (d / "metrics.json").exists()


# ----------------------------------------------------------------------------- J: reproduce's jobs

def test_reproduce_jobs_print_one_line_each_and_their_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MSAT_VERBOSE", raising=False)
    code = "import sys; print('lots of output'); print('error: the one line that matters', file=sys.stderr); " \
           "sys.exit(2)"
    with pytest.raises(RuntimeError) as e:
        run_cmd([sys.executable, "-c", code, f"hydra.run.dir={tmp_path / 'job'}"], "a job")
    log = tmp_path / "job.log"
    assert str(e.value) == f"a job failed: the one line that matters (full output: {log})"
    assert "lots of output" in log.read_text()
    run_cmd([sys.executable, "-c", "print('fine')", f"hydra.sweep.dir={tmp_path / 'sweep'}"], "another job")
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"a job (log: {log}) ... failed",
                                    f"another job (log: {tmp_path / 'sweep.log'}) ... " +
                                    out.out.splitlines()[1].split(" ... ")[1]]
    assert out.out.splitlines()[1].endswith(" s") and "lots of output" not in out.out + out.err
    jobs = ["error: job 0 (model=a) failed: dataset 'x' is not available (log: /w/0/train_ann.log)",
            "error: job 1 (model=b) failed: dataset 'x' is not available (log: /w/1/train_ann.log)"]
    assert error_lines("\n".join(["[2026][msat.cli][ERROR] - error: dataset 'x' is not available", *jobs])) == \
        ["2 jobs failed: dataset 'x' is not available"]
    assert error_lines("[2026][msat.cli][ERROR] - error: once\n") == ["once"]


@pytest.mark.skipif((REPO / "data" / "cifar10").exists(), reason="CIFAR-10 is here: the target would train")
def test_reproduce_without_the_data_says_the_one_line_that_matters(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MSAT_VERBOSE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = reproduce.main(["table3", "--work-dir", str(tmp_path / "work"), "--ckpt-dir", str(tmp_path / "ck")])
    out = capsys.readouterr()
    err = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "Traceback" not in out.out + out.err, out.err
    # the data is probed before the training multirun starts (msat.cli.check_jobs): no job runs, nothing is left
    assert err[0].startswith("error: training cifar10 / resnet20,vgg16 failed: job 0 of 2 (model=resnet20): dataset "
                             "'cifar10' is not available under root"), err[0]
    assert err[0].endswith("; no job was started"), err[0]
    assert out.out.splitlines() == [f"training cifar10 / resnet20,vgg16 (log: "
                                    f"{tmp_path / 'work' / 'table3' / 'train' / 'cifar10.log'}) ... refused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))
