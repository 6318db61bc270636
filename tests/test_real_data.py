"""Real data, offline: the Fashion-MNIST loader (on IDX files the test writes, and on the real files when
installed), the interval and paired-test arithmetic against hand-computed values, the per-image records of a
run, and the claims' verdict rules on constructed runs that hold and that fail."""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import claims as cl
from experiments import compare_methods as cm
from msat.data import DatasetUnavailableError, build_data
from msat.data import fashion
from msat.data.base import DatasetError
from msat.stats import mcnemar, mean_sd, wilson_interval

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- the loader on written IDX files

def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(np.uint8).tobytes()


@pytest.fixture
def small_idx(monkeypatch):
    """Four small IDX files (6 train / 4 test images of 28x28) and the module's expectations set to them."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": (rng.integers(0, 256, (6, 28, 28)), 2051),
              "train-labels-idx1-ubyte": (np.arange(6) % 10, 2049),
              "t10k-images-idx3-ubyte": (rng.integers(0, 256, (4, 28, 28)), 2051),
              "t10k-labels-idx1-ubyte": (np.array([3, 1, 4, 1]), 2049)}
    blobs = {n: idx_bytes(a, m) for n, (a, m) in arrays.items()}
    monkeypatch.setattr(fashion, "FILES", {n: (m, a.shape) for n, (a, m) in arrays.items()})
    monkeypatch.setattr(fashion, "SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in blobs.items()})
    return blobs, arrays


def cfg(root: Path, **kw) -> dict:
    return {"name": "fashion_mnist", "root": str(root), "debian_dir": None, **kw}


def write_raw(root: Path, blobs: dict) -> Path:
    raw = Path(fashion.raw_dir(str(root)))
    raw.mkdir(parents=True)
    for n, b in blobs.items():
        (raw / n).write_bytes(b)
    return raw


def test_loader_reads_written_idx_files(tmp_path, small_idx):
    blobs, arrays = small_idx
    write_raw(tmp_path, blobs)
    b = build_data(cfg(tmp_path, augment=False))
    x = torch.stack([b.train[i][0] for i in range(len(b.train))])
    assert b.input_shape == (1, 28, 28) and len(b.train) == 6 and len(b.test) == 4
    assert b.model_kwargs == {"in_channels": 1}
    raw = torch.tensor(arrays["train-images-idx3-ubyte"][0], dtype=torch.float32) / 255
    mean, std = raw.mean(), raw.std()
    assert torch.allclose(x[:, 0], (raw - mean) / std, atol=1e-5)             # training statistics
    xt = b.test[0][0][0]
    assert torch.allclose(xt, (torch.tensor(arrays["t10k-images-idx3-ubyte"][0][0], dtype=torch.float32) / 255 - mean)
                          / std, atol=1e-5)                                   # test normalized with train stats
    assert [int(b.test[i][1]) for i in range(4)] == [3, 1, 4, 1]
    assert torch.equal(b.calib[2][0], b.train[2][0])                          # calibration: training images


def test_pad_and_augmentation(tmp_path, small_idx):
    write_raw(tmp_path, small_idx[0])
    b = build_data(cfg(tmp_path, pad_to=32))
    assert b.input_shape == (1, 32, 32) and b.test[0][0].shape == (1, 32, 32)
    plain = build_data(cfg(tmp_path, pad_to=32, augment=False))
    border = plain.test[0][0][0, :2, :]                                       # the zero border, normalized
    assert torch.allclose(border, border[0, 0].expand_as(border))
    torch.manual_seed(0)
    draws = {tuple(b.train[0][0].flatten()[:200].tolist()) for _ in range(12)}
    assert len(draws) > 1                                                     # random crop / flip
    assert all(b.train[0][0].shape == (1, 32, 32) for _ in range(3))


def test_debian_gz_files_are_unpacked_once(tmp_path, small_idx):
    deb = tmp_path / "debian"
    deb.mkdir()
    for n, blob in small_idx[0].items():
        (deb / f"{n}.gz").write_bytes(gzip.compress(blob))
    b = build_data(cfg(tmp_path / "root", debian_dir=str(deb), augment=False))
    assert len(b.train) == 6
    assert (Path(fashion.raw_dir(str(tmp_path / "root"))) / "t10k-labels-idx1-ubyte").read_bytes() == \
        small_idx[0]["t10k-labels-idx1-ubyte"]


@pytest.mark.parametrize("damage", ["truncated", "foreign_magic", "wrong_shape", "altered"])
def test_bad_idx_file_is_refused_naming_it(tmp_path, small_idx, damage):
    blobs = dict(small_idx[0])
    name = "train-images-idx3-ubyte"
    b = bytearray(blobs[name])
    if damage == "truncated":
        b = b[:-100]
    elif damage == "foreign_magic":
        b[:4] = struct.pack(">I", 2049)
    elif damage == "wrong_shape":
        b[4:8] = struct.pack(">I", 7)
    else:
        b[-1] ^= 0xFF                                                         # same size, other content
    blobs[name] = bytes(b)
    write_raw(tmp_path, blobs)
    with pytest.raises(DatasetError, match=name):
        build_data(cfg(tmp_path))


def test_absent_names_both_ways_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailableError) as e:
        build_data(cfg(tmp_path / "none", debian_dir=str(tmp_path / "nodeb")))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "dataset.download=true" in msg
    assert str(tmp_path / "none") in msg and "\n" not in msg


@pytest.mark.skipif(not (DEBIAN / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN} absent)")
def test_real_fashion_mnist_from_debian(tmp_path):
    b = build_data({"name": "fashion_mnist", "root": str(tmp_path), "augment": False})   # checks the sha256s
    assert len(b.train) == 60000 and len(b.test) == 10000 and b.input_shape == (1, 28, 28)
    y = torch.stack([b.test[i][1] for i in range(10000)])
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    x = torch.stack([b.train[i][0] for i in range(0, 60000, 60)])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


# ---------------------------------------------------------------- intervals and paired tests

def test_wilson_interval_hand_computed():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490155, abs=1e-5) and hi == pytest.approx(0.943310, abs=1e-5)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] == pytest.approx(0.161125, abs=1e-5)
    lo, hi = wilson_interval(9000, 10000)
    assert lo == pytest.approx(0.894, abs=1e-3) and hi == pytest.approx(0.9058, abs=1e-3)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mcnemar_exact_hand_computed():
    a = np.array([True] * 10 + [False] * 2 + [True] * 5 + [False] * 3)      # b = 10 (a right only), c = 2
    b = np.array([False] * 10 + [True] * 2 + [True] * 5 + [False] * 3)
    m = mcnemar(a, b)
    assert (m["b"], m["c"]) == (10, 2)
    assert m["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096, rel=1e-12)       # 2 P[Bin(12, 1/2) <= 2]
    assert mcnemar(b, a)["p"] == pytest.approx(m["p"])
    assert mcnemar(a, a)["p"] == 1.0
    assert mcnemar([True] * 3, [False] * 3)["p"] == pytest.approx(0.25)
    big = mcnemar([True] * 600 + [False] * 400, [False] * 600 + [True] * 400)
    assert 0 < big["p"] < 1e-9
    m, sd = mean_sd([0.9, 0.92, 0.94])
    assert m == pytest.approx(0.92) and sd == pytest.approx(0.02)
    assert mean_sd([0.5]) == (0.5, None)


# ---------------------------------------------------------------- constructed runs for the verdict rules

def fake_run(correct: np.ndarray, ann: np.ndarray, steps=(1, 2, 4, 8, 16, 32, 64), label="m", **extra) -> dict:
    """A run over n images: ``correct`` (T, n) bool outcomes after t = 1..T steps; ``ann`` (n,) bool."""
    T, n = correct.shape
    pack = lambda v: np.packbits(v.astype(bool)).tobytes().hex()
    counts = [int(c.sum()) for c in correct]
    return {"name": label, "method": {"label": label, "name": label}, "acc": [c / n for c in counts],
            "ann_acc": ann.sum() / n, "counts": {"correct": counts, "ann_correct": int(ann.sum()), "total": n},
            "per_image": {"n": n, "steps": [s for s in steps if s <= T],
                          "correct": {str(s): pack(correct[s - 1]) for s in steps if s <= T}, "ann": pack(ann)},
            **extra}


def ramp(n: int, T: int, reach: list[int]) -> np.ndarray:
    """Image i is right from step reach[i] on (0: never)."""
    t = np.arange(1, T + 1)[:, None]
    r = np.array(reach)[None, :]
    return (r > 0) & (t >= r)


N = 400
ANN = np.ones(N, bool)


def test_faster_holds_fails_and_is_inconclusive():
    fast = fake_run(ramp(N, 64, [2] * N), ANN, label="fast")
    slow = fake_run(ramp(N, 64, [20] * N), ANN, label="slow")
    assert cl.verdict_faster([(fast, slow)], 0.005)[0] == cl.HOLDS
    assert cl.verdict_faster([(slow, fast)], 0.005)[0] == cl.FAILS
    assert cl.verdict_faster([(fast, fast)], 0.005)[0] == cl.FAILS            # same step: not fewer
    # a arrives one step earlier, but only 3 images differ at that step: not significant
    a = fake_run(ramp(N, 64, [3] * (N - 3) + [4] * 3), ANN, label="a")
    b = fake_run(ramp(N, 64, [3] * (N - 3) + [5] * 3), ANN, label="b")
    assert cl.faster_one(a, b, 0.0)[0] == "a?"
    assert cl.verdict_faster([(a, b)], 0.0)[0] == cl.UNSURE
    assert cl.verdict_faster([(fast, slow), (slow, fast)], 0.005)[0] == cl.UNSURE   # seeds disagree
    never = fake_run(ramp(N, 64, [0] * N), ANN, label="never")
    assert cl.verdict_faster([(fast, never)], 0.005)[0] == cl.HOLDS
    assert cl.verdict_faster([(never, never)], 0.005)[0] == cl.UNSURE
    assert cl.verdict_at_least_as_fast(fast, [slow, slow], 0.005)[0] == cl.HOLDS
    assert cl.verdict_at_least_as_fast(slow, [fast, slow], 0.005)[0] == cl.FAILS


def test_early_but_never():
    fixed = fake_run(ramp(N, 64, [10] * N), ANN, label="fixed")
    low = fake_run(ramp(N, 64, [2] * (N // 2) + [0] * (N // 2)), ANN, label="low")   # ahead, stuck at 50 %
    assert cl.verdict_early_never(low, fixed, (4, 8), 0.005)[0] == cl.HOLDS
    reaches = fake_run(ramp(N, 64, [2] * N), ANN, label="reaches")
    assert cl.verdict_early_never(reaches, fixed, (4, 8), 0.005)[0] == cl.FAILS
    behind = fake_run(ramp(N, 64, [30] * (N // 2) + [0] * (N // 2)), ANN, label="behind")
    early = fake_run(ramp(N, 64, [3] * N), ANN, label="early")
    assert cl.verdict_early_never(behind, early, (4, 8), 0.005)[0] == cl.FAILS


def test_sin_verdict():
    T = 256
    early = {f"l{i}": [min(1.0, t / 16) * 0.01 * (i + 1) for t in range(1, T + 1)] for i in range(4)}
    assert cl.verdict_sin(early, 32)[0] == cl.HOLDS
    late = {f"l{i}": [t / T * 0.01 * (i + 1) for t in range(1, T + 1)] for i in range(4)}
    assert cl.verdict_sin(late, 32)[0] == cl.FAILS                             # 1/8 of the share at t=32
    shallow = {f"l{i}": [min(1.0, t / 16) * 0.01 * (4 - i) for t in range(1, T + 1)] for i in range(4)}
    assert cl.verdict_sin(shallow, 32)[0] == cl.FAILS                          # falls with depth


def test_sc_and_energy_verdicts():
    layers = lambda ans: [{"ans": 9.0}, {"ans": ans}]
    plain = fake_run(ramp(N, 32, [20] * N), ANN, steps=(32,), label="plain", layers=layers(2.0))
    better = [fake_run(ramp(N, 32, [10] * N), ANN, steps=(32,), label=f"sc{s}", layers=layers(1.0),
                       config={"seed": s}) for s in range(3)]
    plain_late = fake_run(ramp(N, 32, [0] * N), ANN, steps=(32,), label="plain", layers=layers(2.0))
    assert cl.verdict_sc(plain_late, better, 32)[0] == cl.HOLDS
    assert cl.verdict_sc(plain, better, 32)[0] == cl.UNSURE                    # same accuracy at 32
    more_ans = [dict(r, layers=layers(3.0)) for r in better]
    assert cl.verdict_sc(plain_late, more_ans, 32)[0] == cl.FAILS
    e = lambda ratio, rate: {"energy_at": {"64": {"ratio": ratio, "mean_firing_rate": rate}}}
    assert cl.verdict_energy(e(0.2, 0.05), e(0.3, 0.06), 64)[0] == cl.HOLDS
    assert cl.verdict_energy(e(0.2, 0.07), e(0.3, 0.06), 64)[0] == cl.FAILS


def test_outcomes_must_add_up_to_the_accuracy():
    run = fake_run(ramp(N, 8, [2] * N), ANN, steps=(4,))
    assert cm.outcomes(run, 4).sum() == N
    run["counts"]["correct"][3] -= 1                                         # an edited accuracy
    with pytest.raises(RuntimeError, match="do not add up"):
        cm.outcomes(run, 4)


# ---------------------------------------------------------------- the targets in smoke mode

CLAIM_METHODS = ["if_max", "vth_scaled", "burst", "msat", "msat_dtt", "msat_det", "msat_sc"]


def test_compare_and_claims_smoke_on_synthetic_fashion(tmp_path, monkeypatch):
    """``make reproduce-claims SMOKE=1 DATASET=fashion_mnist MODEL=resnet20`` (the methods the claims read):
    three ANN seeds, the comparison with intervals, seeds and paired tests read from the runs, the claims."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(cm, "list_methods", lambda: list(CLAIM_METHODS))
    results, work, ckpt = tmp_path / "results", tmp_path / "work", tmp_path / "ckpt"
    out = cl.claims("fashion_mnist", "resnet20", smoke=True, results_dir=results, work_dir=work, ckpt_dir=ckpt)
    assert out == results / "claims_fashion_mnist.md"
    for s in (0, 1, 2):
        assert (ckpt / f"synthetic_fashion_mnist_resnet20_w8_s{s}.pt").is_file()

    ctx = cm.context("fashion_mnist", "resnet20", True, results, work, ckpt)
    runs, jobs = cm.load_comparison(ctx)
    n_seed_rows = len(ctx.profile.seed_methods)
    assert [j.seed for j in jobs].count(1) == n_seed_rows == [j.seed for j in jobs].count(2)
    assert all(r["model_spec"]["kwargs"]["width"] == 8 and r["train_run"]["seed"] == j.seed
               for r, j in zip(runs, jobs))
    md = (results / "methods_fashion_mnist_resnet20.md").read_text()
    by_key = {j.key: r for r, j in zip(runs, jobs)}
    msat0, ifs = by_key["msat_relu"], [by_key["if_max_relu"], by_key["if_max_relu_s1"], by_key["if_max_relu_s2"]]
    # the seeds table: mean +- sd of the three runs at T=16
    m, sd = mean_sd([r["acc"][15] for r in ifs])
    assert f"{100 * m:.2f} +- {100 * sd:.2f}" in md
    # the paired table: MSAT vs IF at T=4, from the runs' per-image records
    ref = by_key["if_max_relu"]
    p = mcnemar(cm.outcomes(msat0, 4), cm.outcomes(ref, 4))["p"]
    assert f"{100 * (msat0['acc'][3] - ref['acc'][3]):+.2f} (p={p:.2g})" in md

    claims_md = out.read_text()
    rows = [line for line in claims_md.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) == 9 + 3 * ctx.profile.claims_raw          # claims 1 (x2) and 5 again in raw units
    assert all(line.rstrip(" |").rsplit("| ", 1)[-1] in (cl.HOLDS, cl.FAILS, cl.UNSURE) for line in rows)
    burst = by_key["burst_relu"]
    e_t = str(ctx.steps[-1])
    assert f"{burst['energy_at'][e_t]['ratio']:.3f}" in claims_md                # the energy row reads its runs
    assert (results / "claims_fashion_mnist_sin.png").read_bytes()[:4] == b"\x89PNG"


def test_profiles_name_checkpoints_and_rows(tmp_path, monkeypatch):
    prof = cm.load_profile("fashion_mnist", "resnet20")
    assert prof.tag == "w8" and prof.seeds == (0, 1, 2) and prof.t_grid[-1] >= 64
    jobs = cm.rows(prof.t_grid[-1], prof)
    first = [j for j in jobs if j.seed == 0]
    assert {j.method for j in first} == set(cm.list_methods())            # every registered method ...
    for name in cm.list_methods():                                         # ... with its headline rows: its defaults
        cls = cm.get_method(name)                                          # (SNN Calibration: both protocols, the
        mine = [(dict(j.overrides), j.run_seed) for j in first if j.method == name]   # official one capped to 1 seed)
        want = [({k: v for k, v in var.items() if k != "ann"}, 0) for var in cls.variants[:cls.headline]]
        assert mine == want, name
    assert prof.max_run_seeds == 1 and sum(j.method.startswith("snn_calib") for j in first) == 4
    assert sorted((j.method, j.seed) for j in jobs if j.seed) == sorted(
        (m, s) for m in prof.seed_methods for s in (1, 2))
    assert cm.ckpt_path(tmp_path, "fashion_mnist", "resnet20", "qcfs", prof, 0).name == "fashion_mnist_resnet20_w8_qcfs_s0.pt"
    assert cm.ckpt_path(tmp_path, "digits", "digits_cnn", "relu").name == "digits_digits_cnn.pt"   # no profile
    assert cm.load_profile("digits", "digits_cnn") == cm.Profile()
    (tmp_path / "conf" / "compare").mkdir(parents=True)
    (tmp_path / "conf" / "compare" / "x_y.yaml").write_text("tag: a\nsedes: [0]\n")
    monkeypatch.setattr(cm, "REPO", tmp_path)
    with pytest.raises(cm.UserError, match="unknown keys"):
        cm.load_profile("x", "y")
    (tmp_path / "conf" / "compare" / "x_y.yaml").write_text("sim_overrides: [sim.chunk=16, T=8]\n")
    with pytest.raises(cm.UserError, match="sim_overrides must be sim.<key>=<value>"):
        cm.load_profile("x", "y")                                          # only the simulation's settings
    (tmp_path / "conf" / "compare" / "x_y.yaml").write_text("sim_overrides: [sim.chunk=16, sim.batch_size=50]\n")
    assert cm.load_profile("x", "y").sim_overrides == ("sim.chunk=16", "sim.batch_size=50")
