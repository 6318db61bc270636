"""CIFAR-10/100 (torchvision) and ImageNet (ImageFolder) with the authors' augmentation."""
from __future__ import annotations

import copy
import os

import torch
from torch.utils.data import Dataset

from .base import DataBundle, DatasetError, dataset_root, unavailable

CALIB_TRANSFORMS = ("test", "train", "crop_flip")


class Cutout:
    """Zero ``n_holes`` square patches of side ``length`` in a (C, H, W) tensor (DeVries & Taylor 2017).

    Centres are drawn with torch's global RNG, so seeding torch makes it reproducible; patches are
    clipped at the border, as in the original.
    """

    def __init__(self, length: int = 16, n_holes: int = 1):
        if length < 0 or n_holes < 0:
            raise DatasetError(f"Cutout needs length >= 0 and n_holes >= 0, got {length}, {n_holes}")
        self.length, self.n_holes = length, n_holes

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        img = img.clone()
        for _ in range(self.n_holes):
            cy = int(torch.randint(h, ()))
            cx = int(torch.randint(w, ()))
            y0, y1 = max(cy - self.length // 2, 0), min(cy + self.length // 2, h)
            x0, x1 = max(cx - self.length // 2, 0), min(cx + self.length // 2, w)
            img[..., y0:y1, x0:x1] = 0
        return img

    def __repr__(self) -> str:
        return f"Cutout(length={self.length}, n_holes={self.n_holes})"


def _with_transform(ds: Dataset, tf) -> Dataset:
    """A shallow copy of a torchvision dataset (samples shared, not reloaded) with another transform."""
    out = copy.copy(ds)
    out.transform = tf
    return out


def _calib_transform(choice: str, test_tf, train_tf, crop_flip_tf):
    options = {"test": test_tf, "train": train_tf, "crop_flip": crop_flip_tf}
    if choice not in options:
        raise DatasetError(f"unknown calib_transform {choice!r}; valid: {', '.join(CALIB_TRANSFORMS)}")
    return options[choice]


def cifar_transforms(cfg) -> tuple:
    """(train, test, crop_flip) transforms. Train: crop(pad 4), flip, AutoAugment(CIFAR10), ToTensor,
    Cutout, Normalize (the authors' order: the hole is black before normalization)."""
    from torchvision import transforms as T        # torchvision loads in ~2 s: only when a vision dataset is built

    norm = T.Normalize(tuple(cfg["mean"]), tuple(cfg["std"]))
    geo = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    train = list(geo)
    if cfg["autoaugment"]:
        train.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
    train.append(T.ToTensor())
    if int(cfg["cutout"]) > 0:
        train.append(Cutout(int(cfg["cutout"])))
    train.append(norm)
    return T.Compose(train), T.Compose([T.ToTensor(), norm]), T.Compose(geo + [T.ToTensor(), norm])


_CIFAR = {"cifar10": ("CIFAR10", "cifar-10-batches-py", 10), "cifar100": ("CIFAR100", "cifar-100-python", 100)}


def build_cifar(cfg, calib_transform: str = "test") -> DataBundle:
    """CIFAR-10 or CIFAR-100 under ``root/<torchvision folder>``; ``download=true`` fetches it once."""
    from torchvision import datasets

    name = cfg["name"]
    cls_name, folder, n_cls = _CIFAR[name]
    cls = getattr(datasets, cls_name)
    if int(cfg["num_classes"]) != n_cls:
        raise DatasetError(f"{name} has {n_cls} classes, config says num_classes={cfg['num_classes']}")
    root = dataset_root(cfg)
    train_tf, test_tf, cf_tf = cifar_transforms(cfg)
    calib_tf = _calib_transform(calib_transform, test_tf, train_tf, cf_tf)
    how = (f"Place the python version of the dataset as {os.path.join(root, folder)}/ (the extracted "
           f"torchvision archive), or run with dataset.download=true on a machine with internet.")

    def make(train: bool, tf) -> Dataset:
        try:
            return cls(root, train=train, transform=tf, download=False)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            if not cfg["download"]:
                raise unavailable(name, root, how, e) from e
        try:
            return cls(root, train=train, transform=tf, download=True)
        except Exception as e:  # no network, bad checksum, disk full
            raise unavailable(name, root, how, e) from e

    train = make(True, train_tf)
    return DataBundle(name=name, train=train, test=make(False, test_tf),
                      calib=_with_transform(train, calib_tf), num_classes=n_cls, input_shape=(3, 32, 32))


def build_imagenet(cfg, calib_transform: str = "test") -> DataBundle:
    """ImageNet as two ImageFolders ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``."""
    from torchvision import datasets, transforms as T

    name = cfg["name"]
    root = dataset_root(cfg)
    size, resize = int(cfg["image_size"]), int(cfg["resize"])
    norm = T.Normalize(tuple(cfg["mean"]), tuple(cfg["std"]))
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), norm])
    calib_tf = _calib_transform(calib_transform, test_tf, train_tf, train_tf)
    how = ("ImageNet cannot be downloaded automatically: place the training images as "
           f"{root}/train/<class>/<image> and the validation images sorted into class folders as "
           f"{root}/val/<class>/<image> (same class folder names in both).")

    def make(split: str, tf) -> Dataset:
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise unavailable(name, root, how)
        try:
            return datasets.ImageFolder(path, transform=tf)
        except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images
            raise unavailable(name, root, how, e) from e

    train, test = make("train", train_tf), make("val", test_tf)
    if train.classes != test.classes:
        raise unavailable(name, root, how + f" Found {len(train.classes)} train and {len(test.classes)} "
                                            "val classes with different names.")
    if len(train.classes) != int(cfg["num_classes"]):
        raise DatasetError(f"{name}: found {len(train.classes)} class folders under {root}/train, "
                         f"config says num_classes={cfg['num_classes']}")
    return DataBundle(name=name, train=train, test=test, calib=_with_transform(train, calib_tf),
                      num_classes=len(train.classes), input_shape=(3, size, size))
