"""IMDB sentiment (25k train / 25k test): regex tokenizer, train-split vocabulary, fixed length.

Local format (what tests and offline users provide): ``root/train.jsonl`` and ``root/test.jsonl``,
one JSON object per line ``{"text": str, "label": 0 | 1}``. With ``download: true`` the Hugging Face
``imdb`` dataset is fetched once (cache in ``root/hf_cache``) and written to that format.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Iterable, Sequence

import torch
from torch.utils.data import TensorDataset

from ..utils import atomic_write_text
from .base import DataBundle, DatasetError, dataset_root, unavailable

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_BR = re.compile(r"<br\s*/?>")


def tokenize(text: str) -> list[str]:
    """Lowercase, drop ``<br />`` tags, keep runs of letters/digits (with an apostrophe suffix)."""
    return _TOKEN.findall(_BR.sub(" ", text.lower()))


def build_vocab(token_lists: Iterable[Sequence[str]], vocab_size: int) -> list[str]:
    """``[<pad>, <unk>]`` + the ``vocab_size`` most frequent tokens; ties broken alphabetically."""
    counts = Counter(t for toks in token_lists for t in toks)
    counts.pop(PAD, None)
    counts.pop(UNK, None)
    words = sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size]
    return [PAD, UNK] + words


def encode(token_lists: Sequence[Sequence[str]], vocab: Sequence[str], max_len: int) -> torch.Tensor:
    """Token ids (N, max_len) int64: unknown -> 1, truncated to the first ``max_len``, padded with 0 at the end."""
    stoi = {w: i for i, w in enumerate(vocab)}
    out = torch.zeros(len(token_lists), max_len, dtype=torch.int64)  # (N, L), 0 = <pad>
    for i, toks in enumerate(token_lists):
        ids = [stoi.get(t, 1) for t in toks[:max_len]]
        if ids:
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def _read_jsonl(path: str) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{line_no}: not a JSON object ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict) or "text" not in row or "label" not in row:
                raise DatasetError(f"{path}:{line_no}: each line needs 'text' and 'label'")
            label = row["label"]
            if isinstance(label, bool) or not isinstance(label, int):
                raise DatasetError(f"{path}:{line_no}: 'label' must be an integer, got {label!r}")
            texts.append(str(row["text"]))
            labels.append(label)
    return texts, labels


def _write_jsonl(path: str, texts: Sequence[str], labels: Sequence[int]) -> None:
    atomic_write_text(path, "".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels)))


def _download(root: str) -> None:
    """Fetch Hugging Face ``imdb`` and write ``train.jsonl`` / ``test.jsonl`` under ``root``."""
    from datasets import load_dataset

    ds = load_dataset("imdb", cache_dir=os.path.join(root, "hf_cache"))
    os.makedirs(root, exist_ok=True)
    for split in ("train", "test"):
        _write_jsonl(os.path.join(root, f"{split}.jsonl"), ds[split]["text"], ds[split]["label"])


def build_imdb(cfg, artifacts: dict | None = None) -> DataBundle:
    """IMDB bundle. The vocabulary comes from ``artifacts["vocab"]`` (a checkpoint's) or ``cfg.vocab``
    if given, otherwise it is built from the training split."""
    name = cfg["name"]
    root = dataset_root(cfg)
    files = [os.path.join(root, f"{s}.jsonl") for s in ("train", "test")]
    how = (f"Provide {files[0]} and {files[1]} (one JSON object per line: "
           '{"text": ..., "label": 0|1}), or run with dataset.download=true on a machine with internet '
           "(and HF_DATASETS_OFFLINE unset).")
    if not all(os.path.isfile(f) for f in files):
        if not cfg["download"]:
            raise unavailable(name, root, how)
        try:
            _download(root)
        except Exception as e:  # offline, hub error
            raise unavailable(name, root, how, e) from e
    (tr_text, tr_y), (te_text, te_y) = _read_jsonl(files[0]), _read_jsonl(files[1])
    if not tr_text or not te_text:
        raise unavailable(name, root, how + " The files exist but one of them is empty.")
    n_cls = int(cfg["num_classes"])
    bad = sorted({y for y in tr_y + te_y if not 0 <= y < n_cls})
    if bad:
        raise DatasetError(f"{name}: labels {bad} outside [0, {n_cls}) in {root}")
    tr_tok, te_tok = [tokenize(t) for t in tr_text], [tokenize(t) for t in te_text]
    vocab = (artifacts or {}).get("vocab") or cfg["vocab"]
    vocab = list(vocab) if vocab else build_vocab(tr_tok, int(cfg["vocab_size"]))
    if vocab[:2] != [PAD, UNK]:
        raise DatasetError(f"{name}: a vocabulary must start with {PAD!r}, {UNK!r}; got {vocab[:2]}")
    max_len = int(cfg["max_len"])
    train = TensorDataset(encode(tr_tok, vocab, max_len), torch.tensor(tr_y, dtype=torch.int64))
    test = TensorDataset(encode(te_tok, vocab, max_len), torch.tensor(te_y, dtype=torch.int64))
    return DataBundle(name=name, train=train, test=test, calib=train, num_classes=n_cls,
                      input_shape=(max_len,), model_kwargs={"vocab_size": len(vocab)},
                      artifacts={"vocab": vocab})
