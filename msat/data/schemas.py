"""The ``dataset`` group's schemas: one dataclass per dataset family (keys, types, defaults, help).

``build_data`` validates the dataset node against its family's schema (``msat.config.from_mapping``:
an unknown or mistyped key is one error line listing the valid keys) and hands the builder a
complete plain dict; the YAML files under ``conf/dataset/`` hold only what differs from here.
"""
from dataclasses import dataclass
from typing import List, Optional

from ..config import ConfigError, param


@dataclass
class DatasetConfig:
    """Keys every dataset has, and the training hints ``conf/train/default.yaml`` reads."""

    name: str = param("digits", "the dataset (msat.data.list_datasets())")
    root: str = param("", "where its files are (${paths.data_dir}/<name>)")
    download: bool = param(False, "fetch what can be fetched when the files are missing")
    num_classes: int = param(10, "number of classes")
    epochs: Optional[int] = param(None, "training epochs of this dataset (train.epochs defaults to it, else 300)")
    batch_size: Optional[int] = param(None, "training batch size of this dataset (train.batch_size defaults to it, "
                                      "else 128)")
    num_workers: Optional[int] = param(None, "DataLoader workers of this dataset (train.num_workers defaults to it)")

    def check(self, where: str = "dataset") -> None:
        if self.num_classes < 1:
            raise ConfigError(f"{where}.num_classes must be >= 1, got {self.num_classes}")


@dataclass
class DigitsConfig(DatasetConfig):
    test_fraction: float = param(0.25, "share of the 1797 images in the stratified test split")
    split_seed: int = param(0, "seed of the split")


@dataclass
class CifarConfig(DatasetConfig):
    mean: List[float] = param([0.4914, 0.4822, 0.4465], "Normalize mean")
    std: List[float] = param([0.2470, 0.2435, 0.2616], "Normalize std")
    autoaugment: bool = param(True, "AutoAugment (CIFAR-10 policy) in the training transform")
    cutout: int = param(16, "Cutout hole side in pixels (0: off)")


@dataclass
class FashionMNISTConfig(DatasetConfig):
    debian_dir: Optional[str] = param("/usr/share/datasets/fashion-mnist", "Debian's dataset-fashion-mnist files "
                                      "(.gz), decompressed into root/FashionMNIST/raw/ when that is empty; null: never")
    verify: bool = param(True, "check each decompressed file's sha256 against the recorded one")
    pad_to: Optional[int] = param(None, "zero-pad the 28x28 images to this side (32: CIFAR architectures unchanged)")
    augment: bool = param(True, "random crop + horizontal flip in the training transform")
    crop_padding: int = param(2, "random crop: zero padding on each side before the crop")
    flip: bool = param(True, "random horizontal flip in the training transform")
    test_images: Optional[int] = param(None, "use only the first N test images (null: all 10,000)")

    def check(self, where: str = "dataset") -> None:
        super().check(where)
        if self.test_images is not None and not 1 <= self.test_images <= 10000:
            raise ConfigError(f"{where}.test_images must be in 1..10000 or null, got {self.test_images}")
        if self.pad_to is not None and self.pad_to < 28:
            raise ConfigError(f"{where}.pad_to must be >= 28 (the image side) or null, got {self.pad_to}")
        if self.crop_padding < 0:
            raise ConfigError(f"{where}.crop_padding must be >= 0, got {self.crop_padding}")


@dataclass
class SyntheticFashionConfig(DatasetConfig):
    n_train: int = param(512, "training images")
    n_test: int = param(256, "test images")
    noise: float = param(1.0, "Gaussian noise added to the class pattern")
    pattern_size: int = param(4, "side of the low-resolution class pattern before upsampling")
    seed: int = param(0, "seed of the patterns and the noise")
    pad_to: Optional[int] = param(None, "image side (as fashion_mnist's pad_to; null: 28)")


@dataclass
class ImageNetConfig(DatasetConfig):
    image_size: int = param(224, "crop size")
    resize: int = param(256, "test-time resize before the center crop")
    mean: List[float] = param([0.485, 0.456, 0.406], "Normalize mean")
    std: List[float] = param([0.229, 0.224, 0.225], "Normalize std")


@dataclass
class IMDBConfig(DatasetConfig):
    vocab_size: int = param(20000, "most frequent training words; the model sees vocab_size + 2 (<pad>, <unk>)")
    max_len: int = param(256, "tokens per review: truncated / padded at the end")
    vocab: Optional[List[str]] = param(None, "a fixed vocabulary (starting <pad>, <unk>); evaluation reuses the "
                                       "checkpoint's")


@dataclass
class SpeechConfig(DatasetConfig):
    sample_rate: int = param(8000, "resampled from 16 kHz")
    num_samples: int = param(8000, "samples per clip (1 s), padded / trimmed")


@dataclass
class SyntheticImagesConfig(DatasetConfig):
    n_train: int = param(512, "training images")
    n_test: int = param(256, "test images")
    noise: float = param(1.0, "Gaussian noise added to the class pattern")
    pattern_size: int = param(4, "side of the low-resolution class pattern before upsampling")
    seed: int = param(0, "seed of the patterns and the noise")


@dataclass
class SyntheticIMDBConfig(DatasetConfig):
    n_train: int = param(512, "training sequences")
    n_test: int = param(256, "test sequences")
    vocab_size: int = param(200, "fake words (+ <pad>, <unk>)")
    max_len: int = param(32, "tokens per sequence")
    markers: int = param(8, "class-specific marker tokens per class")
    marker_rate: float = param(0.2, "share of positions holding a marker")
    seed: int = param(0, "seed")


@dataclass
class SyntheticSpeechConfig(DatasetConfig):
    n_train: int = param(512, "training clips")
    n_test: int = param(256, "test clips")
    num_samples: int = param(8000, "samples per clip")
    sample_rate: int = param(8000, "sample rate of the tone")
    noise: float = param(0.5, "Gaussian noise added to the tone")
    seed: int = param(0, "seed")


__all__ = ["DatasetConfig", "DigitsConfig", "CifarConfig", "FashionMNISTConfig", "SyntheticFashionConfig", "ImageNetConfig", "IMDBConfig", "SpeechConfig",
           "SyntheticImagesConfig", "SyntheticIMDBConfig", "SyntheticSpeechConfig"]
