"""Google Speech Commands v0.02 (35 words) at 8 kHz, read with soundfile (no FFmpeg needed)."""
from __future__ import annotations

import os

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset
from torchaudio.datasets import SPEECHCOMMANDS
from torchaudio.transforms import Resample

from .base import DataBundle, DatasetError, dataset_root, unavailable

# The 35 words of v0.02, sorted; a label's index in this list is its class id.
LABELS = sorted([
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
])


class SpeechCommands8k(Dataset):
    """torchaudio's SPEECHCOMMANDS file lists and split, waveform read with soundfile, resampled to
    ``sample_rate``, padded/trimmed to ``num_samples``. Item: ``((1, num_samples) float32, label id)``."""

    def __init__(self, root: str, subset: str, sample_rate: int = 8000, num_samples: int = 8000,
                 download: bool = False):
        self.base = SPEECHCOMMANDS(root, url="speech_commands_v0.02", download=download, subset=subset)
        self._archive = os.path.join(root, "SpeechCommands")      # get_metadata paths are relative to it
        self.sample_rate, self.num_samples = sample_rate, num_samples
        self._resamplers: dict[int, Resample] = {}
        unknown = sorted({self.base.get_metadata(i)[2] for i in range(len(self.base))} - set(LABELS))
        if unknown:
            raise DatasetError(f"speech_commands: folders {unknown} are not among the 35 v0.02 words")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, n: int) -> tuple[torch.Tensor, int]:
        relpath, _, label, _, _ = self.base.get_metadata(n)
        data, sr = soundfile.read(os.path.join(self._archive, relpath), dtype="float32", always_2d=True)
        wav = torch.from_numpy(np.ascontiguousarray(data.T[:1]))    # (1, N), first channel
        if sr != self.sample_rate:
            if sr not in self._resamplers:
                self._resamplers[sr] = Resample(sr, self.sample_rate)
            wav = self._resamplers[sr](wav)
        wav = wav[:, :self.num_samples]
        if wav.shape[1] < self.num_samples:
            wav = torch.nn.functional.pad(wav, (0, self.num_samples - wav.shape[1]))  # (1, num_samples)
        return wav, LABELS.index(label)


def build_speech_commands(cfg) -> DataBundle:
    """Training / testing subsets from the official validation_list.txt and testing_list.txt."""
    name = cfg["name"]
    root = dataset_root(cfg)
    if int(cfg["num_classes"]) != len(LABELS):
        raise DatasetError(f"{name} has {len(LABELS)} classes, config says num_classes={cfg['num_classes']}")
    path = os.path.join(root, "SpeechCommands", "speech_commands_v0.02")
    how = (f"Extract speech_commands_v0.02.tar.gz into {path}/ (<word>/<file>.wav, validation_list.txt, "
           "testing_list.txt), or run with dataset.download=true on a machine with internet.")
    sr, n = int(cfg["sample_rate"]), int(cfg["num_samples"])

    def make(subset: str) -> SpeechCommands8k:
        try:
            ds = SpeechCommands8k(root, subset, sr, n, download=bool(cfg["download"]))
        except (OSError, RuntimeError) as e:  # missing folder or list file, failed download
            raise unavailable(name, root, how, e) from e
        if len(ds) == 0:
            raise unavailable(name, root, how + f" The {subset} subset is empty.")
        return ds

    train, test = make("training"), make("testing")
    return DataBundle(name=name, train=train, test=test, calib=train, num_classes=len(LABELS),
                      input_shape=(1, n))
