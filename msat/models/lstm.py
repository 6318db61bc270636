"""Bidirectional LSTM sentiment classifier (IMDB): analog recurrent encoder, ReLU head."""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


class BiLSTMClassifier(nn.Module):
    """Embedding -> bidirectional LSTM -> masked mean over time -> Linear -> ReLU -> Linear.

    Input (B, L) int64 token ids, ``pad_idx`` marks padding (excluded from the mean).
    """

    def __init__(self, num_classes: int = 2, vocab_size: int = 20002, embed_dim: int = 128,
                 hidden: int = 128, num_layers: int = 3, pad_idx: int = 0, dropout: float = 0.2,
                 act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.pad_idx = pad_idx
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_idx)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=num_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.fc1 = nn.Linear(2 * hidden, hidden)
        self.relu = act()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_idx).unsqueeze(-1)           # (B, L, 1)
        seq = self.lstm(self.embedding(tokens))[0]              # (B, L, 2H)
        mask = mask.to(seq.dtype)
        summary = (seq * mask).sum(1) / mask.sum(1).clamp(min=1.0)   # (B, 2H)
        return self.fc2(self.dropout(self.relu(self.fc1(summary))))


@register_model
def bilstm(num_classes: int = 2, **kw) -> nn.Module:
    """3-layer BiLSTM for IMDB; kwargs ``vocab_size, embed_dim, hidden, num_layers, pad_idx, dropout, act``."""
    return BiLSTMClassifier(num_classes=num_classes, **kw)
