"""The token-summed cross-entropy that the loop normalises over micro-batches and ranks.

It sits below engine/ so that data/ (the bucket warm-up, which runs the step's loss once per
shape) can use it without importing the engine; engine/loss.py re-exports it. lean_ce.py computes
the same value without materialising the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_ce_sum(logits: torch.Tensor, labels: torch.Tensor,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum of cross-entropy over target tokens (labels != -100), computed in fp32. With
    `label_smoothing` e, each token's loss is (1 - e) x its cross-entropy + e x the mean over the
    vocabulary of -log p (torch's definition, and the Trainer's label_smoothing_factor's)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=-100, reduction="sum", label_smoothing=label_smoothing)
