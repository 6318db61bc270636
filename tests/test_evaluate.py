"""convert_eval end to end on the bundled digits: metrics schema, files, W&B offline, exact
sample-weighted accuracy, determinism, bad input before compute, torchrun = single process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import msat
from msat import evaluate
from msat.config import EvalConfig, from_mapping
from msat.evaluate import report_steps
from msat.measure import unpack_outcomes
from msat.utils import UserError

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")


def make_cfg(tmp: Path, ckpt_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("convert_eval", overrides=[f"paths.ckpt_dir={ckpt_dir}", f"paths.output_dir={tmp}",
                                                  "sim.progress=false", "logger=none", *overrides])


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    """A digits_cnn checkpoint from 3 short epochs (train_ann.py's code path)."""
    from msat.training import train

    d = tmp_path_factory.mktemp("ckpt")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train_ann", overrides=[f"paths.ckpt_dir={d}", f"paths.output_dir={d}", "logger=none",
                                              "train.epochs=3", "train.batch_size=64", "train.progress=false"])
    train(cfg, run_dir=d / "train")
    assert (d / "digits_digits_cnn.pt").is_file()
    return d


@pytest.fixture(scope="module")
def digits_run(ckpt_dir, tmp_path_factory):
    """One conversion of digits at T=16, W&B asked online without credentials (falls back to offline);
    batch 100 leaves a last batch of 50 of the 450 test images."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_cfg(tmp, ckpt_dir, "T=16", "method=msat", "sim.batch_size=100", "sim.chunk=5", "logger=wandb",
                   "logger.mode=online")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.setenv("NETRC", str(tmp / "no-netrc"))
        metrics = evaluate.run(cfg, run_dir=tmp / "run")
    return metrics, tmp / "run"


def test_metrics_schema_and_files(digits_run):
    m, run_dir = digits_run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["acc"] == m["acc"] and on_disk["ann_acc"] == m["ann_acc"]
    for key in ("ann_acc", "acc", "steps_to_lossless", "layers", "sin_curve", "energy", "config", "timing",
                "versions"):
        assert key in on_disk, key
    assert len(m["acc"]) == 16 and all(0.0 <= a <= 1.0 for a in m["acc"])
    layers = m["layers"]
    assert [L["name"] for L in layers] == list(m["sin_curve"]) and len(layers) >= 2
    for L in layers:
        assert set(L) == {"name", "scale", "firing_rate", "sin_ratio", "q", "ans", "p", "negative_spikes"}
        assert L["scale"] > 0 and 0.0 <= L["sin_ratio"] <= 1.0 and 0.0 <= L["q"] <= 1.0
        assert L["negative_spikes"] == 0                                   # MSAT emits no negative spike
        assert len(m["sin_curve"][L["name"]]) == 16
    e = m["energy"]
    assert set(e["op_ann"]) == set(e["op_snn"]) and e["ratio"] > 0 and 0 < e["mean_firing_rate"] < 1
    assert m["timing"]["images"] == 450 and m["timing"]["steps"] == 16 and m["timing"]["image_steps_per_s"] > 0
    assert m["config"]["T"] == 16 and m["config"]["method"]["name"] == "msat" == m["method"]["name"]
    assert m["method"]["label"] == "MSAT" and m["method"]["dynamics"] == "msat" and m["method"]["ann"] == "relu"
    assert m["method"]["conversion"]["calib"] == m["config"]["calib"]             # what ran is what is recorded
    assert set(m["method"]["cost"]) >= {"calib_seconds", "forwards", "presim_steps"}
    assert (run_dir / "config.yaml").is_file() and set(on_disk["files"]) >= {"acc_curve.csv", "layers.csv", "config.yaml"}
    assert m["versions"]["torch"] == str(torch.__version__)
    assert m["negative_spikes"] == 0 and len(m["ckpt_sha256"]) == 64 and m["train_run"]["epoch"] >= 1
    rec = m["per_image"]                                                  # per-image outcomes add up
    assert rec["n"] == 450 and rec["steps"] == report_steps(16)
    for t in rec["steps"]:
        assert int(unpack_outcomes(rec["correct"][str(t)], 450).sum()) == m["counts"]["correct"][t - 1]
    assert int(unpack_outcomes(rec["ann"], 450).sum()) == m["counts"]["ann_correct"]
    curve = (run_dir / "acc_curve.csv").read_text().splitlines()
    assert curve[0] == "t,acc" and len(curve) == 17 and float(curve[16].split(",")[1]) == m["acc"][15]
    rows = (run_dir / "layers.csv").read_text().splitlines()
    assert rows[0].split(",") == ["name", "scale", "firing_rate", "sin_ratio", "q", "ans", "p"]
    assert len(rows) == len(layers) + 1
    for png in ("acc_vs_T.png", "sin_ratio.png", "firing_rate.png"):
        data = (run_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, png


def test_wandb_offline_run_directory(digits_run):
    """logger.mode=online without an account: the run completes and logs offline."""
    _, run_dir = digits_run
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_accuracy_is_sample_weighted(digits_run, ckpt_dir):
    """acc[t] = correct/450 over all samples; the mean of per-batch accuracies (100,100,100,100,50) differs."""
    m, _ = digits_run
    counts = m["counts"]
    assert counts["total"] == 450
    assert m["acc"] == [c / 450 for c in counts["correct"]]
    cfg = make_cfg(Path("/nonexistent"), ckpt_dir, "T=16", "method=msat")
    from msat.utils import DistEnv, to_plain

    prep = evaluate.prepare(*evaluate.check_config(cfg), to_plain(cfg), Path("/nonexistent"), DistEnv(),
                            torch.device("cpu"))
    snn = prep.snn
    loader, _ = evaluate.shard_loader(prep.bundle.test, 100, 0, 1)
    per_batch, correct = [], torch.zeros(16, dtype=torch.int64)
    for x, y in loader:
        hit = (msat.simulate(snn, x, 16).cumsum(0).argmax(-1) == y).sum(1)    # (T,)
        per_batch.append(hit.double() / y.shape[0])
        correct += hit
    assert correct.tolist() == counts["correct"]
    batch_mean = torch.stack(per_batch).mean(0)
    assert any(abs(float(b) - a) > 1e-6 for b, a in zip(batch_mean, m["acc"]))


def test_steps_to_lossless_definition(digits_run):
    m, _ = digits_run
    stl = m["steps_to_lossless"]
    hits = [t for t, a in enumerate(m["acc"], start=1) if a >= m["ann_acc"]]
    assert stl == (hits[0] if hits else None)
    assert evaluate.steps_to_lossless([1, 5, 9, 10], 10, 10) == 4
    assert evaluate.steps_to_lossless([1, 5, 9, 9], 10, 10) is None
    assert evaluate.steps_to_lossless([1, 5, 9, 9], 10, 10, tol=0.1) == 3


def test_same_seed_same_numbers_with_sc(ckpt_dir, tmp_path):
    """SC draws come from the run's seeded generator: two runs agree exactly; p is derived per layer."""
    a = evaluate.run(make_cfg(tmp_path, ckpt_dir, "T=8", "method=msat_sc", "sc.E=4"), run_dir=tmp_path / "a")
    b = evaluate.run(make_cfg(tmp_path, ckpt_dir, "T=8", "method=msat_sc", "sc.E=4"), run_dir=tmp_path / "b")
    assert a["acc"] == b["acc"] and a["layers"] == b["layers"]
    ps = [L["p"] for L in a["layers"]]
    assert ps[:-1] == [None] * (len(ps) - 1) and 0.0 <= ps[-1] <= 1.0
    assert a["stats_t"] == 4


def test_report_steps():
    assert evaluate.report_steps(256) == [1, 4, 8, 16, 32, 64, 128, 256]
    assert evaluate.report_steps(20) == [1, 4, 8, 16, 20]
    assert evaluate.report_steps(64, [64, 1, 7]) == [1, 7, 64]
    with pytest.raises(UserError, match=r"report_T \[0, 64\] outside 1..T=32"):     # the config's one check
        from_mapping(EvalConfig, {"T": 32, "report_T": [0, 16, 64]})


@pytest.mark.parametrize("overrides, message", [
    (("T=0",), "T must be a positive integer"),
    (("T=16", "report_T=[8,32]"), r"report_T \[32\] outside 1..T=16"),
    (("T=8", "method=msat_sc"), "sc.E=16, beyond T=8"),
    (("dataset.name=mnist",), "valid datasets: .*digits"),
    (("model.name=alexnet",), "valid models: .*digits_cnn"),
    (("neuron.units=adaptive",), "valid values: normalized, raw"),
    (("+sim.chunck=8",), "unknown key sim.chunck; valid keys of sim: batch_size, chunk"),
    (("method=qcfs",), "method 'qcfs' converts a QCFS ANN"),
])
def test_bad_input_fails_before_compute(ckpt_dir, tmp_path, monkeypatch, overrides, message):
    monkeypatch.setattr(evaluate, "simulate", lambda *a, **k: pytest.fail("simulated despite bad input"))
    with pytest.raises(UserError, match=message):
        evaluate.run(make_cfg(tmp_path, ckpt_dir, *overrides), run_dir=tmp_path / "r")


def test_missing_and_mismatched_checkpoint(ckpt_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "simulate", lambda *a, **k: pytest.fail("simulated despite bad input"))
    with pytest.raises(UserError, match=r"create it with: python train_ann.py dataset=digits model=digits_cnn"):
        evaluate.run(make_cfg(tmp_path, tmp_path / "empty"), run_dir=tmp_path / "r")
    with pytest.raises(UserError, match=r"trained with another model .*model.kwargs.width: checkpoint 32, config 16"):
        evaluate.run(make_cfg(tmp_path, ckpt_dir, "model.kwargs.width=16"), run_dir=tmp_path / "r")


def test_objective_for_sweeps(ckpt_dir, tmp_path):
    m = evaluate.run(make_cfg(tmp_path, ckpt_dir, "T=8", "objective_T=4", "method=if_max"), run_dir=tmp_path / "r")
    assert m["objective"] == m["acc"][3]


def test_cli_error_and_torchrun_equals_single_process(ckpt_dir, tmp_path, digits_run):
    """torchrun with 2 gloo ranks: each simulates every other batch; metrics equal the 1-process run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    bad = subprocess.run([sys.executable, "convert_eval.py", "T=-3", f"paths.ckpt_dir={ckpt_dir}",
                          f"hydra.run.dir={tmp_path / 'bad'}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "T must be a positive integer" in bad.stderr
    single, _ = digits_run
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "convert_eval.py", "T=16", "method=msat", "sim.batch_size=100", "sim.chunk=5", "sim.progress=false",
           "logger=none", "device=cpu", f"paths.ckpt_dir={ckpt_dir}", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((out / "metrics.json").read_text())
    assert ddp["timing"]["world_size"] == 2
    assert ddp["acc"] == single["acc"] and ddp["counts"] == single["counts"]
    assert ddp["ann_acc"] == single["ann_acc"] and ddp["layers"] == single["layers"]
    assert ddp["sin_curve"] == single["sin_curve"] and ddp["energy"] == single["energy"]


def test_optuna_sweep_maximizes_returned_accuracy(ckpt_dir, tmp_path):
    """sweep=optuna: the task returns acc at objective_T; Optuna's best value is the best trial's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    out = tmp_path / "optuna"
    cmd = [sys.executable, "convert_eval.py", "sweep=optuna", "T=4", "objective_T=4", "hydra.sweeper.n_trials=2",
           "logger=none", f"paths.ckpt_dir={ckpt_dir}", f"hydra.sweep.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [json.loads((out / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert trials[0]["config"]["neuron"]["alpha"] != trials[1]["config"]["neuron"]["alpha"]
    from omegaconf import OmegaConf

    best = OmegaConf.load(out / "optimization_results.yaml").best_value
    assert best == max(t["acc"][3] for t in trials) == max(t["objective"] for t in trials)


def test_checkpoint_resume_equals_uninterrupted_run(ckpt_dir, tmp_path):
    """Stopped after 3 of 8 batches (state at 2), then resume=true: the numbers equal one straight run
    with SC on (its seeded draws exercised), and the state file is gone once metrics.json exists."""
    args = ("T=8", "method=msat_sc", "sc.E=4", "sim.batch_size=64", "sim.chunk=3", "sim.checkpoint_every=2")
    straight = evaluate.run(make_cfg(tmp_path, ckpt_dir, *args), run_dir=tmp_path / "straight")
    assert not (tmp_path / "straight" / "eval_state.pt").exists()
    run_dir = tmp_path / "resumed"
    with pytest.raises(evaluate.StopRequested, match="after 3 batches"):
        evaluate.run(make_cfg(tmp_path, ckpt_dir, *args, "sim.stop_after_batches=3"), run_dir=run_dir)
    state = torch.load(run_dir / "eval_state.pt", weights_only=True)
    assert state["batches_done"] == 2 and state["next_batch"] == 2 and int(state["ann_counts"][1]) == 128
    assert int(state["accuracy"]["total"]) == 128 and not (run_dir / "metrics.json").exists()
    with pytest.raises(UserError, match="resolved config"):           # another config never reuses it
        evaluate.run(make_cfg(tmp_path, ckpt_dir, *args, "seed=1", "resume=true"), run_dir=run_dir)
    resumed = evaluate.run(make_cfg(tmp_path, ckpt_dir, *args, "resume=true", "sim.checkpoint_every=0"),
                           run_dir=run_dir)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    for key in ("acc", "layers", "sin_curve", "firing_curve", "energy", "counts", "ann_acc"):
        assert on_disk[key] == straight[key] == resumed[key], key
    assert resumed["timing"]["resumed_images"] == 128 and straight["timing"]["resumed_images"] == 0
    assert not (run_dir / "eval_state.pt").exists()


def test_resume_state_checks(ckpt_dir, tmp_path, monkeypatch):
    """Config keys that leave the numbers unchanged are not fingerprinted; weights and world size are;
    bad checkpoint settings fail before compute."""
    cfg = make_cfg(tmp_path, ckpt_dir, "T=4")
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(cfg, resolve=True)
    neutral = OmegaConf.to_container(make_cfg(tmp_path / "elsewhere", ckpt_dir, "T=4", "resume=true",
                                              "sim.checkpoint_every=7", "sim.stop_after_batches=1"), resolve=True)
    assert evaluate.config_fingerprint(base, 1) == evaluate.config_fingerprint(neutral, 1)
    assert evaluate.config_fingerprint(base, 1) != evaluate.config_fingerprint(base, 2)
    other = OmegaConf.to_container(make_cfg(tmp_path, ckpt_dir, "T=4", "sim.batch_size=32"), resolve=True)
    assert evaluate.config_fingerprint(base, 1) != evaluate.config_fingerprint(other, 1)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert evaluate.weights_fingerprint(a) != evaluate.weights_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert evaluate.weights_fingerprint(a) == evaluate.weights_fingerprint(b)
    assert evaluate.state_path(tmp_path, 0, 1).name == "eval_state.pt"
    assert evaluate.state_path(tmp_path, 1, 2).name == "eval_state.rank1.pt"
    (tmp_path / "eval_state.rank0.pt").write_bytes(b"")                # written by 2 processes
    with pytest.raises(UserError, match="different number of processes"):
        evaluate.load_eval_state(tmp_path / "eval_state.pt", {}, tmp_path, 1, torch.device("cpu"))
    assert evaluate.load_eval_state(tmp_path / "eval_state.rank1.pt", {}, tmp_path, 2, torch.device("cpu")) is None
    monkeypatch.setattr(evaluate, "simulate", lambda *a, **k: pytest.fail("simulated despite bad input"))
    for bad, message in (("sim.checkpoint_every=-1", "checkpoint_every"), ("sim.stop_after_batches=0", "stop_after")):
        with pytest.raises(UserError, match=message):
            evaluate.run(make_cfg(tmp_path, ckpt_dir, bad), run_dir=tmp_path / "r")
    from omegaconf import OmegaConf
    raw = OmegaConf.to_container(make_cfg(tmp_path, ckpt_dir), resolve=True)
    with pytest.raises(UserError, match="resume must be true or false, got 'maybe'"):
        evaluate.run({**raw, "resume": "maybe"}, run_dir=tmp_path / "r")


def test_every_rank_needs_a_test_batch():
    """A split with fewer batches than processes is refused before compute (no rank without counts)."""
    evaluate.check_shards(450, 64, 2)                       # 8 batches for 2 ranks: fine
    evaluate.check_shards(65, 64, 2)                        # 2 batches: one each
    with pytest.raises(UserError, match="2 processes"):
        evaluate.check_shards(64, 64, 2)


def test_what_ran_is_what_is_recorded_and_a_relaunch_repeats_it(ckpt_dir, tmp_path):
    """The authors' calibration loader (200 shuffled images) and MSAT + SC: metrics.json's config holds the
    calibration block exactly as composed, the conversion record equals it and says 200 images were used;
    re-launched from the recorded config (library and command line) the run gives identical numbers."""
    cfg = make_cfg(tmp_path, ckpt_dir, "T=16", "method=msat_sc", "calib=authors", "calib.batch_size=200",
                   "sim.batch_size=150")
    from omegaconf import OmegaConf

    composed = OmegaConf.to_container(cfg, resolve=True)
    first = evaluate.run(cfg, run_dir=tmp_path / "first")
    assert first["config"]["calib"] == composed["calib"] == {"percentile": 1.0, "per_channel": False, "batches": 1,
                                                             "batch_size": 200, "transform": "crop_flip",
                                                             "shuffle": True}
    assert first["method"]["conversion"]["calib"] == composed["calib"]
    assert first["method"]["cost"]["calib_images"] == 200
    again = evaluate.run(first["config"], run_dir=tmp_path / "again")              # the library
    for key in ("acc", "counts", "layers", "energy", "ann_acc"):
        assert again[key] == first[key], key
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    r = subprocess.run([sys.executable, "convert_eval.py", "--config-path", str(tmp_path / "first"),
                        "--config-name", "config", f"hydra.run.dir={tmp_path / 'cli'}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert cli["acc"] == first["acc"] and cli["layers"] == first["layers"]


# ----------------------------------------------------------------------------- every method, end to end

QCFS_CKPT = "digits_digits_cnn_qcfs.pt"
METHOD_MIN_ACC = 0.80       # at T=16 on the 450 test images; chance is 0.10. Measured (3-epoch ANNs): the lowest
                            # is vth_scaled (0.860), the QCFS rows 0.949 (qcfs) and 0.938 (srp), most >= 0.95


@pytest.fixture(scope="module")
def qcfs_ckpt(ckpt_dir) -> Path:
    """A QCFS-trained digits_cnn (model.act=qcfs, 3 short epochs) beside the ReLU one."""
    from msat.training import train

    path = ckpt_dir / QCFS_CKPT
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train_ann", overrides=[f"paths.ckpt_dir={ckpt_dir}", f"paths.output_dir={ckpt_dir}",
                                              "logger=none", "model.act=qcfs", f"train.ckpt_path={path}",
                                              "train.epochs=3", "train.batch_size=64", "train.progress=false"])
    train(cfg, run_dir=ckpt_dir / "train_qcfs")
    assert path.is_file()
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread for the tiny digits tensors: on a loaded 2-core machine two spinning OpenMP threads
    make each in-place op of the neuron loop ~100x slower (measured: 8 ms vs 0.04 ms per add)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _method_cases() -> list:
    """(method, ANN) for every registered method and every ANN its comparison rows convert (``variants``):
    the first of ``Method.ann`` by default, e.g. QCFS for qcfs, srp and cos, plus MSAT, SRP and COS on the other
    one."""
    from msat.methods import get_method, list_methods

    cases = []
    for name in list_methods():
        cls = get_method(name)
        anns = dict.fromkeys(v.get("ann", cls.ann[0]) for v in cls.variants)
        cases += [pytest.param(name, ann, id=f"{name}-{ann}") for ann in anns]
    return cases


@pytest.mark.parametrize("name, ann", _method_cases())
def test_every_method_end_to_end(request, one_thread, ckpt_dir, tmp_path, name, ann):
    """Every registered method (on the ANNs of its comparison rows): evaluate.run on digits at T=16 records the
    method that ran, reaches well above chance, and records its resolved parameters."""
    from msat.methods import get_method

    extra = ("model.act=qcfs", f"ckpt={request.getfixturevalue('qcfs_ckpt')}") if ann == "qcfs" else ()
    m = evaluate.run(make_cfg(tmp_path, ckpt_dir, f"method={name}", "T=16", *extra), run_dir=tmp_path / "run")
    rec, cls = m["method"], get_method(name)
    assert rec["name"] == name == m["config"]["method"]["name"]
    assert rec["dynamics"] == cls.dynamics and rec["ann"] == ann == m["model_spec"]["act"]
    assert m["counts"]["total"] == 450 and len(m["acc"]) == 16
    assert m["acc"][15] >= METHOD_MIN_ACC, (name, ann, m["acc"][15], m["ann_acc"])
    assert m["ann_acc"] >= 0.9
    params = rec["params"]
    if name.startswith("snn_calib"):
        assert params["calib_T"] == 16 and "(calib. T=16, shared calibration batch" in rec["label"]   # the run's T
        assert rec["label"].endswith("(the official code has average pooling only))") == (ann == "relu")  # max pools
        assert rec["cost"]["sim_steps"] >= 16 * len(m["layers"])                       # one calib_T run per layer
    elif name in ("srp", "cos"):                                   # tau / rho pre-simulation steps per batch
        key = "tau" if name == "srp" else "rho"
        assert params[key] == 4 and rec["presim_steps"] == 4 == rec["cost"]["presim_steps"]
        ext = ", ReLU ANN (our extension)" if ann == "relu" else ""
        assert rec["label"] == f"{name.upper()} ({key}=4){ext}"
    elif name == "spicalib":
        assert params["allowance"] == 8 and params["debt"] == "braincog"
        assert rec["label"] == "SpiCalib (A=8, BrainCog's rule)"
    else:
        assert rec["presim_steps"] == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == rec


def test_cli_runs_a_method_like_the_library(one_thread, ckpt_dir, tmp_path):
    """python convert_eval.py method=snn_calib_advanced T=16: exit 0, and its metrics.json holds the numbers
    evaluate.run gives in process for the same config."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "convert_eval.py", "method=snn_calib_advanced", "T=16", "logger=none",
                        "sim.progress=false", f"paths.ckpt_dir={ckpt_dir}", f"hydra.run.dir={out}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from msat.runs import load_run

    cli = load_run(out)                                             # every file of the committed set verified
    assert cli["method"]["name"] == "snn_calib_advanced" and cli["method"]["params"]["calib_T"] == 16
    assert set(cli["files"]) >= {"acc_curve.csv", "config.yaml", "layers.csv", "acc_vs_T.png"}
    lib = evaluate.run(make_cfg(tmp_path, ckpt_dir, "method=snn_calib_advanced", "T=16"), run_dir=tmp_path / "lib")
    assert cli["counts"] == lib["counts"] and cli["acc"] == lib["acc"] and cli["layers"] == lib["layers"]
    assert cli["acc"][15] >= METHOD_MIN_ACC


# ----------------------------------------------------------------------------- the stages on their own

def test_stages_one_by_one(one_thread, ckpt_dir, tmp_path):
    """check_config -> prepare -> simulate_split -> summarize -> write, called one by one, give run()'s
    numbers; write commits a verified set, and a second write with a smaller set leaves no stale file."""
    import time

    from msat.loggers import RunLogger
    from msat.runs import load_run
    from msat.utils import DistEnv, to_plain

    T, run_dir = 8, tmp_path / "staged"
    cfg = make_cfg(tmp_path, ckpt_dir, f"T={T}", "method=msat_dtt", "sim.batch_size=100", "sim.chunk=3")
    t0 = time.perf_counter()
    ecfg, conv = evaluate.check_config(cfg)
    resolved = dict(to_plain(cfg))
    prep = evaluate.prepare(ecfg, conv, resolved, run_dir, DistEnv(), torch.device("cpu"))
    n_test = len(prep.bundle.test)
    assert n_test == 450 and prep.snn.method.name == "msat_dtt"

    counts = evaluate.simulate_split(prep)
    assert counts.total == n_test and counts.resumed_images == 0
    correct = counts.accs.correct
    assert correct.dtype == torch.int64 and correct.shape == (T,)
    assert all(0 <= c <= n_test for c in correct.tolist())
    with torch.no_grad():                                           # the ANN count, independently
        ann = sum(int((prep.model(x).argmax(-1) == y).sum()) for x, y in evaluate.shard_loader(prep.bundle.test,
                                                                                                 100, 0, 1)[0])
    assert counts.ann_correct == ann

    metrics = evaluate.summarize(prep, counts, t0)
    acc = metrics["acc"]
    assert len(acc) == T and metrics["counts"]["correct"] == correct.tolist()
    assert all(acc[t - 1] == correct[t - 1].item() / n_test for t in range(1, T + 1))
    assert metrics["ann_acc"] == ann / n_test and metrics["acc_at"]["8"] == acc[7]
    assert metrics["timing"]["images"] == n_test and metrics["timing"]["steps"] == T

    full = RunLogger(ecfg.logger, run_dir, resolved, local=False)   # logger none: its local files join the set
    first = evaluate.write(metrics, prep, full)
    on_disk = load_run(run_dir)                                     # verifies every file's sha256
    assert on_disk["acc"] == acc and on_disk["files"] == first["files"]
    logger_files = {"metrics.jsonl", "metrics.csv", "summary.json", "layers.csv", "energy.csv"}
    assert set(first["files"]) >= logger_files | {"acc_curve.csv", "config.yaml", "acc_vs_T.png", "sin_ratio.png",
                                                   "firing_rate.png"}
    assert all((run_dir / f).is_file() for f in first["files"])
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == T

    # the second set lacks the logger's files (a disabled logger writes none): they must not survive
    second = evaluate.write({**metrics, "name": "second"}, prep, RunLogger(ecfg.logger, run_dir, enabled=False))
    assert not set(second["files"]) & logger_files
    again = load_run(run_dir)
    assert again["name"] == "second" and again["files"] == second["files"]
    assert all((run_dir / f).is_file() for f in second["files"])
    assert not any((run_dir / f).exists() for f in logger_files)
    left = {p.name for p in run_dir.iterdir()} - set(second["files"]) - {"metrics.json", ".lock"}
    assert left == set(), left                                      # no staging directory, no stale file

    whole = evaluate.run(cfg, run_dir=tmp_path / "whole")            # the stages are run()'s
    for key in ("acc", "counts", "ann_acc", "layers", "sin_curve", "energy", "method"):
        if key == "method":
            assert {k: v for k, v in whole[key].items() if k != "cost"} == \
                   {k: v for k, v in metrics[key].items() if k != "cost"}
        else:
            assert whole[key] == metrics[key], key
