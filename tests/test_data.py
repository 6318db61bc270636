"""Datasets: every config builds; internet datasets through their real loaders on small fake files."""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from msat.data import Cutout, DatasetUnavailableError, build_data, build_loader, dataset_config, list_datasets
from msat.utils import UserError
from msat.data.imdb import build_vocab, encode, tokenize
from msat.data.speech import LABELS

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
INTERNET = ["cifar10", "cifar100", "imagenet", "imdb", "speech_commands"]


# ---------------------------------------------------------------- configs, registry, loader

def test_every_dataset_has_a_config(group_cfg, tmp_path):
    stems = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert stems == list_datasets()
    for stem in stems:
        cfg = dataset_config(group_cfg("dataset", stem, tmp_path))          # checked against its schema
        assert cfg["name"] == stem
        assert {"root", "download", "num_classes"} <= set(cfg)
        if stem in INTERNET:
            assert cfg["root"] == f"{tmp_path}/{stem}" and cfg["download"] is False
    with pytest.raises(UserError, match="unknown key dataset.cutuot; valid keys of dataset: name, root"):
        dataset_config({"name": "cifar10", "root": "x", "cutuot": 8})


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="synthetic_cifar"):
        build_data({"name": "mnist"})


def test_build_loader_order_depends_only_on_seed():
    ds = torch.utils.data.TensorDataset(torch.arange(50))
    order = lambda seed: torch.cat([b[0] for b in build_loader(ds, 7, shuffle=True, seed=seed)])
    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == list(range(50))


# ---------------------------------------------------------------- digits and synthetic

def test_digits(group_cfg, tmp_path):
    b = build_data(group_cfg("dataset", "digits", tmp_path))
    assert (len(b.train), len(b.test), b.num_classes, b.input_shape) == (1347, 450, 10, (1, 8, 8))
    x, y = b.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= int(y) < 10


SYNTH = {"synthetic_cifar": (3, 32, 32), "synthetic_cifar100": (3, 32, 32), "synthetic_digits": (1, 8, 8),
         "synthetic_imagenet": (3, 224, 224),
         "synthetic_imdb": (32,), "synthetic_speech": (1, 8000)}


def _stack(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(ys)


def _features(name, x):
    """Features in which a nearest-centroid classifier should separate the classes."""
    if name == "synthetic_imdb":
        return torch.nn.functional.one_hot(x, 202).sum(1)[:, 1:].float()  # bag of tokens, <pad> dropped
    if name == "synthetic_speech":
        return torch.fft.rfft(x[:, 0]).abs()                                # magnitude spectrum
    return x.flatten(1)


@pytest.mark.parametrize("name", sorted(SYNTH))
def test_synthetic_is_deterministic_and_learnable(group_cfg, tmp_path, name):
    overrides = {"synthetic_speech": ("n_train=70", "n_test=70"), "synthetic_cifar100": ("n_train=300", "n_test=200")
                 }.get(name, ("n_train=32", "n_test=32"))
    cfg = group_cfg("dataset", name, tmp_path, overrides)
    b1, b2 = build_data(cfg), build_data(cfg)
    x, y = _stack(b1.train)
    xt, yt = _stack(b1.test)
    assert tuple(x.shape[1:]) == SYNTH[name] == b1.input_shape
    assert len(b1.train) == len(b1.calib) == int(cfg.n_train) and len(b1.test) == int(cfg.n_test)
    assert torch.equal(x, _stack(b2.train)[0]) and torch.equal(y, _stack(b2.train)[1])
    assert not torch.equal(x[: len(xt)], xt)                                 # test split is new noise
    cfg.seed = 1
    assert not torch.equal(x, _stack(build_data(cfg).train)[0])
    c = b1.num_classes
    counts = torch.bincount(y, minlength=c)
    assert counts.max() - counts.min() <= 1                                  # balanced
    # nearest class centroid (fit on train) beats chance by a wide margin on test
    f, ft = _features(name, x), _features(name, xt)
    centroids = torch.stack([f[y == k].mean(0) for k in range(c)])
    acc = (torch.cdist(ft, centroids).argmin(1) == yt).float().mean().item()
    assert acc > min(0.9, 3.0 / c), acc
    if name == "synthetic_imdb":
        assert b1.model_kwargs["vocab_size"] == len(b1.artifacts["vocab"]) == 202
        assert x.dtype == torch.int64 and x.max() < 202


# ---------------------------------------------------------------- missing / broken datasets

@pytest.mark.parametrize("name", INTERNET)
def test_missing_dataset_fails_fast_with_root(group_cfg, tmp_path, name):
    cfg = group_cfg("dataset", name, tmp_path / "nowhere")
    t0 = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as e:
        build_data(cfg)
    assert time.perf_counter() - t0 < 5.0
    assert str(tmp_path / "nowhere" / name) in str(e.value) and name in str(e.value)


@pytest.mark.parametrize("name", INTERNET)
def test_empty_root_fails_with_clear_error(group_cfg, tmp_path, name):
    root = tmp_path / name
    (root / "train").mkdir(parents=True)                                     # imagenet: no class folders
    (root / "val").mkdir()
    (root / "cifar-10-batches-py").mkdir()
    (root / "cifar-100-python").mkdir()
    (root / "SpeechCommands" / "speech_commands_v0.02").mkdir(parents=True)  # no list files
    (root / "train.jsonl").write_text("")
    (root / "test.jsonl").write_text("")
    with pytest.raises(DatasetUnavailableError, match=str(root)):
        build_data(group_cfg("dataset", name, tmp_path))


# ---------------------------------------------------------------- CIFAR through torchvision's classes

def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fake_cifar(root: Path, cls, n_classes: int, per_file: int, monkeypatch) -> dict[str, np.ndarray]:
    """Write pickles in torchvision's layout and point the class's md5 lists at them."""
    rng = np.random.default_rng(0)
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if cls is torchvision.datasets.CIFAR10 else "fine_labels"
    written = {}

    def dump(fname, obj):
        with open(folder / fname, "wb") as f:
            pickle.dump(obj, f)
        return [fname, _md5(folder / fname)]

    lists = {}
    for attr in ("train_list", "test_list"):
        entries = []
        for fname, _ in getattr(cls, attr):
            data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            labels = rng.integers(0, n_classes, per_file).tolist()
            written[fname] = data
            entries.append(dump(fname, {"data": data, label_key: labels}))
        lists[attr] = entries
    meta_entry = dump(cls.meta["filename"], {cls.meta["key"]: [f"c{i}" for i in range(n_classes)]})
    monkeypatch.setattr(cls, "train_list", lists["train_list"])
    monkeypatch.setattr(cls, "test_list", lists["test_list"])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_entry[1]})
    return written


@pytest.mark.parametrize("name,cls,n_cls", [("cifar10", torchvision.datasets.CIFAR10, 10),
                                            ("cifar100", torchvision.datasets.CIFAR100, 100)])
def test_cifar_real_loader_on_fake_files(group_cfg, tmp_path, monkeypatch, name, cls, n_cls):
    written = _fake_cifar(tmp_path / name, cls, n_cls, per_file=3, monkeypatch=monkeypatch)
    cfg = group_cfg("dataset", name, tmp_path)
    b = build_data(cfg)
    n_train_files = len(cls.train_list)
    assert (len(b.train), len(b.test), len(b.calib)) == (3 * n_train_files, 3, 3 * n_train_files)
    assert b.num_classes == n_cls and b.input_shape == (3, 32, 32)
    mean, std = torch.tensor(list(cfg.mean)), torch.tensor(list(cfg.std))
    # test transform = ToTensor + Normalize, exactly
    raw = torch.from_numpy(written[cls.test_list[0][0]][0].reshape(3, 32, 32)).float() / 255
    x, _ = b.test[0]
    torch.testing.assert_close(x, (raw - mean[:, None, None]) / std[:, None, None])
    # calib = training images with the test transform
    raw_tr = torch.from_numpy(written[cls.train_list[0][0]][0].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(b.calib[0][0], (raw_tr - mean[:, None, None]) / std[:, None, None])
    # train transform is random and holds a Cutout hole (value 0 before Normalize)
    torch.manual_seed(0)
    xa, ya = b.train[0]
    assert xa.shape == (3, 32, 32) and int(ya) == int(b.calib[0][1])
    hole = (xa == (-mean / std)[:, None, None]).all(0)
    assert hole.sum() >= 8 * 8
    # the authors' calibration augmentation is selectable
    assert "RandomCrop" in repr(build_data(cfg, calib_transform="crop_flip").calib.transform)
    assert "AutoAugment" in repr(build_data(cfg, calib_transform="train").calib.transform)
    with pytest.raises(ValueError, match="test, train, crop_flip"):
        build_data(cfg, calib_transform="val")


def test_cutout_is_one_clipped_square_and_seeded():
    torch.manual_seed(1)
    a = Cutout(16)(torch.ones(3, 32, 32))
    torch.manual_seed(1)
    assert torch.equal(a, Cutout(16)(torch.ones(3, 32, 32)))
    zero = (a == 0).all(0)
    assert torch.equal((a == 0).any(0), zero)                                # same hole on every channel
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
    assert zero.sum() == len(rows) * len(cols)                               # one rectangle
    assert rows.diff().eq(1).all() and cols.diff().eq(1).all()


# ---------------------------------------------------------------- ImageNet as ImageFolders

def test_imagenet_real_loader_on_fake_folders(group_cfg, tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            d = tmp_path / "imagenet" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = group_cfg("dataset", "imagenet", tmp_path, ("num_classes=2", "image_size=32", "resize=36"))
    b = build_data(cfg)
    assert (len(b.train), len(b.test), b.num_classes, b.input_shape) == (4, 4, 2, (3, 32, 32))
    x, y = b.test[3]
    assert x.shape == (3, 32, 32) and y == 1
    assert b.train[0][0].shape == (3, 32, 32)
    torch.testing.assert_close(b.calib[0][0], b.calib[0][0])               # test transform: deterministic
    cfg.num_classes = 1000
    with pytest.raises(ValueError, match="found 2 class folders"):
        build_data(cfg)


# ---------------------------------------------------------------- IMDB from local jsonl

def test_tokenize_and_vocab():
    assert tokenize("Great movie!<br /><br />I didn't LIKE it, 10/10") == \
        ["great", "movie", "i", "didn't", "like", "it", "10", "10"]
    vocab = build_vocab([["b", "a", "c", "a"], ["c", "d"]], vocab_size=3)
    assert vocab == ["<pad>", "<unk>", "a", "c", "b"]                        # a=2, c=2 (alphabetical), then b
    ids = encode([["a", "zzz", "b"], ["c"] * 5], vocab, max_len=4)
    assert ids.tolist() == [[2, 1, 4, 0], [3, 3, 3, 3]]


def _write_imdb(root: Path):
    root.mkdir(parents=True)
    train = [("A great great film", 1), ("awful film, awful acting", 0), ("great acting", 1), ("bad", 0)]
    test = [("great unknownword", 1), ("awful", 0)]
    for split, rows in (("train", train), ("test", test)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows))


def test_imdb_local_files_and_vocab_reuse(group_cfg, tmp_path):
    _write_imdb(tmp_path / "imdb")
    cfg = group_cfg("dataset", "imdb", tmp_path, ("vocab_size=4", "max_len=3"))
    b = build_data(cfg)
    vocab = b.artifacts["vocab"]
    assert vocab == ["<pad>", "<unk>", "great", "acting", "awful", "film"]   # 3, then 2 each (alphabetical)
    assert b.model_kwargs == {"vocab_size": 6} and b.input_shape == (3,) and b.num_classes == 2
    x, y = b.test[0]
    assert x.tolist() == [2, 1, 0] and int(y) == 1                            # great, <unk>, <pad>
    assert b.train[0][0].tolist() == [1, 2, 2]                               # "a" is not in the vocabulary
    # evaluation reuses a checkpoint's vocabulary instead of rebuilding it
    given = ["<pad>", "<unk>", "great", "awful"]
    b2 = build_data(cfg, artifacts={"vocab": given})
    assert b2.artifacts["vocab"] == given and b2.model_kwargs["vocab_size"] == 4
    assert b2.test[0][0].tolist() == [2, 1, 0]
    cfg.vocab = given
    assert build_data(cfg).test[1][0].tolist() == [3, 0, 0]


# ---------------------------------------------------------------- Speech Commands layout, read with soundfile

def test_speech_commands_real_lists_on_fake_wavs(group_cfg, tmp_path):
    import soundfile

    base = tmp_path / "speech_commands" / "SpeechCommands" / "speech_commands_v0.02"
    files = {}
    for word, freq in (("yes", 440.0), ("no", 1000.0), ("zero", 2000.0)):
        (base / word).mkdir(parents=True)
        for i, n in enumerate((16000, 12000)):
            t = np.arange(n) / 16000
            rel = f"{word}/spk{i}_nohash_0.wav"
            soundfile.write(base / rel, (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32), 16000)
            files[rel] = (word, freq, n)
    (base / "_background_noise_").mkdir()
    soundfile.write(base / "_background_noise_" / "noise.wav", np.zeros(16000, np.float32), 16000)
    (base / "validation_list.txt").write_text("no/spk1_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("yes/spk1_nohash_0.wav\nzero/spk1_nohash_0.wav\n")
    b = build_data(group_cfg("dataset", "speech_commands", tmp_path))
    assert (len(b.train), len(b.test), b.num_classes, b.input_shape) == (3, 2, 35, (1, 8000))
    assert len(LABELS) == 35 and LABELS == sorted(LABELS)
    for ds in (b.train, b.test):
        for i in range(len(ds)):
            rel = ds.base.get_metadata(i)[0].split("/", 1)[1]
            word, freq, n = files[rel]
            x, y = ds[i]
            assert x.shape == (1, 8000) and x.dtype == torch.float32 and y == LABELS.index(word)
            kept = n // 2                                                    # samples after 16k -> 8k
            assert torch.all(x[0, kept:] == 0)                               # zero padding to 1 s
            spec = torch.fft.rfft(x[0, : kept]).abs()
            assert abs(spec.argmax().item() * 8000 / kept - freq) < 5        # the tone survives resampling
    assert {b.test.base.get_metadata(i)[2] for i in range(2)} == {"yes", "zero"}
