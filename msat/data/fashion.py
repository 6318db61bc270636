"""Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 real 28x28 grey images, 10 classes, offline.

Where the files come from, in order (never the network unless ``download=true``):

1. ``root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision's layout);
2. Debian's package ``dataset-fashion-mnist`` (``debian_dir``, ``/usr/share/datasets/fashion-mnist``):
   its ``.gz`` files are decompressed into (1) once. They were recompressed by Debian, so their MD5s
   differ from the ones torchvision lists and ``FashionMNIST(download=True)`` over them would go to the
   network; torchvision only checks that the decompressed files exist, so (1) is what it reads.
3. ``download=true``: torchvision's ``FashionMNIST(download=True)``.

What is read is checked before use: the IDX magic numbers, shapes and counts (60,000 / 10,000 of
28x28), then the sha256 of each decompressed file against :data:`SHA256` (recorded from Debian's
package and equal to the files torchvision downloads). A truncated, foreign or altered file is one
``DatasetError`` naming it. torchvision's reader (``datasets.FashionMNIST``) then parses them.

Preprocessing: pixels / 255, optional zero pad to ``pad_to`` (32 lets the paper's CIFAR VGG16 and
ResNet20 run unchanged, with 1 input channel), standardized with the training split's mean and std.
Training takes a random crop (``crop_padding``) and a horizontal flip; the calibration split is the
training images (test transform unless ``calib.transform`` says otherwise), never test images.
"""
from __future__ import annotations

import gzip
import os
import struct

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..utils import atomic_write_bytes, file_sha256
from .base import DataBundle, DatasetError, dataset_root, unavailable
from .vision import CALIB_TRANSFORMS

FILES = {  # name -> (IDX magic, expected shape)
    "train-images-idx3-ubyte": (2051, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (2049, (60000,)),
    "t10k-images-idx3-ubyte": (2051, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (2049, (10000,)),
}
SHA256 = {  # of the decompressed files (measured on Debian's dataset-fashion-mnist, 2026-12-07)
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def raw_dir(root: str) -> str:
    """torchvision's folder of the decompressed files under ``root``."""
    return os.path.join(root, "FashionMNIST", "raw")


def check_idx(path: str, magic: int, shape: tuple, sha256: str | None = None) -> None:
    """An IDX file of unsigned bytes with this magic number and shape (and content, when ``sha256``)."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4 + 4 * len(shape))
    if len(head) < 4 or struct.unpack(">I", head[:4])[0] != magic:
        found = struct.unpack(">I", head[:4])[0] if len(head) >= 4 else None
        raise DatasetError(f"{path}: not an IDX file of {name} (magic number {found}, expected {magic})")
    if len(head) < 4 + 4 * len(shape):
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{len(shape)}I", head[4:])
    if tuple(dims) != tuple(shape):
        raise DatasetError(f"{path}: shape {tuple(dims)}, expected {tuple(shape)} (not the Fashion-MNIST {name})")
    expected = 4 + 4 * len(shape) + int(torch.tensor(shape).prod())
    if size != expected:
        raise DatasetError(f"{path}: {size} bytes, expected {expected} for shape {tuple(shape)} (truncated or padded)")
    if sha256 is not None and (found := file_sha256(path)) != sha256:
        raise DatasetError(f"{path}: sha256 {found[:16]}... differs from the recorded Fashion-MNIST "
                           f"{name} ({sha256[:16]}...): another or altered file")


def _unpack_debian(debian_dir: str, raw: str) -> bool:
    """Decompress Debian's ``.gz`` files into ``raw`` (each written atomically); False when they are absent."""
    sources = {n: os.path.join(debian_dir, n + ".gz") for n in FILES}
    if not all(os.path.isfile(p) for p in sources.values()):
        return False
    os.makedirs(raw, exist_ok=True)
    for name, src in sources.items():
        dst = os.path.join(raw, name)
        if not os.path.isfile(dst):
            try:
                with gzip.open(src, "rb") as f:
                    atomic_write_bytes(dst, f.read())
            except (OSError, EOFError) as e:
                raise DatasetError(f"{src}: cannot be decompressed ({type(e).__name__}: {e})") from e
    return True


def locate(cfg) -> str:
    """The root whose ``FashionMNIST/raw/`` holds the four checked files (unpacking or downloading them)."""
    root = dataset_root(cfg)
    raw = raw_dir(root)
    how = (f"Install Debian's package (apt-get install dataset-fashion-mnist: files in {cfg['debian_dir']}), "
           f"or place the four decompressed IDX files in {raw}/, or run with dataset.download=true on a "
           "machine with internet (torchvision's FashionMNIST)")
    have = lambda: all(os.path.isfile(os.path.join(raw, n)) for n in FILES)
    if not have() and cfg["debian_dir"]:
        try:
            _unpack_debian(os.path.expanduser(str(cfg["debian_dir"])), raw)
        except OSError as e:             # root not writable
            raise unavailable("fashion_mnist", root, how, e) from e
    if not have() and cfg["download"]:
        from torchvision import datasets

        try:
            datasets.FashionMNIST(root, train=True, download=True)
        except Exception as e:           # no network, bad checksum, disk full
            raise unavailable("fashion_mnist", root, how, e) from e
    if not have():
        raise unavailable("fashion_mnist", root, how)
    for name, (magic, shape) in FILES.items():
        check_idx(os.path.join(raw, name), magic, shape, SHA256[name] if cfg["verify"] else None)
    return root


class Augmented(Dataset):
    """(N, C, H, W) float images with a per-item random crop (zero padding ``pad``) and horizontal flip,
    drawn from torch's global RNG (seeded training reproduces it)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int, flip: bool = True):
        self.x, self.y, self.pad, self.flip = x, y, int(pad), flip

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i]
        if self.pad > 0:
            h, w = img.shape[-2:]
            dy, dx = (int(v) for v in torch.randint(2 * self.pad + 1, (2,)))
            img = F.pad(img, (self.pad,) * 4)[:, dy:dy + h, dx:dx + w]
        if self.flip and bool(torch.rand(()) < 0.5):
            img = img.flip(-1)
        return img, self.y[i]


def _tensors(root: str, train: bool, pad_to: int | None, mean: float | None = None,
             std: float | None = None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    from torchvision import datasets   # its reader parses the IDX files

    ds = datasets.FashionMNIST(root, train=train, download=False)
    x = ds.data.to(torch.float32).div_(255.0).unsqueeze(1)           # (N, 1, 28, 28)
    if pad_to:
        extra = int(pad_to) - x.shape[-1]
        x = F.pad(x, (extra // 2, extra - extra // 2) * 2)          # zero (black) border
    if mean is None:
        mean, std = float(x.mean()), float(x.std())
    return (x - mean) / std, ds.targets.to(torch.int64), mean, std


def build_fashion_mnist(cfg, calib_transform: str = "test") -> DataBundle:
    """Fashion-MNIST from ``root`` or Debian's package, checked, normalized with training statistics."""
    pad_to = cfg["pad_to"]
    if pad_to is not None and int(pad_to) < 28:
        raise DatasetError(f"dataset.pad_to must be >= 28 (the image side) or null, got {pad_to}")
    if int(cfg["num_classes"]) != 10:
        raise DatasetError(f"fashion_mnist has 10 classes, config says num_classes={cfg['num_classes']}")
    if calib_transform not in CALIB_TRANSFORMS:
        raise DatasetError(f"unknown calib_transform {calib_transform!r}; valid: {', '.join(CALIB_TRANSFORMS)}")
    root = locate(cfg)
    xtr, ytr, mean, std = _tensors(root, True, pad_to)
    xte, yte, _, _ = _tensors(root, False, pad_to, mean, std)
    if cfg.get("test_images"):
        xte, yte = xte[:int(cfg["test_images"])], yte[:int(cfg["test_images"])]
    crop = int(cfg["crop_padding"])
    train = Augmented(xtr, ytr, crop, flip=bool(cfg["flip"])) if cfg["augment"] else TensorDataset(xtr, ytr)
    calib = {"test": TensorDataset(xtr, ytr), "train": train, "crop_flip": Augmented(xtr, ytr, crop)}[calib_transform]
    side = int(xtr.shape[-1])
    return DataBundle(name="fashion_mnist", train=train, test=TensorDataset(xte, yte), calib=calib, num_classes=10,
                      input_shape=(1, side, side), model_kwargs={"in_channels": 1})
