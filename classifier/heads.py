"""Classification heads that read a backbone's feature map ``(B, C, h, w)``."""
from __future__ import annotations

import torch
import torch.nn as nn


class LinearHead(nn.Module):
    """Global average pooling, dropout and one linear layer: ``(B, C, h, w) -> (B, K)``.

    The pooling-then-linear shape is what class activation mapping (Zhou et al. 2016) needs:
    the logit of class ``k`` is the spatial mean of ``sum_c fc.weight[k, c] * A_c``.
    """

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(feats.mean((2, 3))))


class RecurrentHead(nn.Module):
    """The feature map read as a sequence of ``h*w`` spatial positions by an LSTM or GRU,
    its last hidden state classified by a linear layer (the CNN-LSTM / CNN-RNN of Islam et al.).

    ``(B, C, h, w) -> (B, h*w, C) -> rnn -> (B, hidden) -> (B, K)``.
    """

    def __init__(self, channels: int, num_classes: int, kind: str = "lstm", hidden: int = 256,
                 dropout: float = 0.0):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = rnn(channels, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        seq = feats.flatten(2).transpose(1, 2).float()  # (B, h*w, C); RNNs stay in fp32
        out, _ = self.rnn(seq)
        return self.fc(self.drop(out[:, -1]))


HEADS = ("linear", "lstm", "gru")


def build_head(kind: str, channels: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    if kind == "linear":
        return LinearHead(channels, num_classes, dropout)
    return RecurrentHead(channels, num_classes, kind, dropout=dropout)
