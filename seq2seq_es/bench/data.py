"""Synthetic benchmark data: random token ids with lengths drawn from a named distribution.

Every implementation of a benchmark run trains on the same examples (same seed). Lengths count
tokens of the source and of the target (labels) and are drawn as:

| name  | source tokens                                          | target tokens |
|-------|--------------------------------------------------------|---------------|
| fixed | 512                                                    | 128           |
| mlsum | N(900, 150) rounded, clipped to [200, 1024] (a fifth at 1024: cut articles) | 20-60 uniform |
| sqac  | 100-480 uniform (question plus context)               | 2-30 uniform  |
| miam  | 10-120 uniform (dialogue turns)                        | 5-40 uniform  |

Sources longer than a model's learned positions are clipped to them (BART has 1024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UnknownNameError

LABEL_PAD = -100
DISTRIBUTIONS = ("fixed", "mlsum", "sqac", "miam")


def draw_lengths(dist: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(source lengths, target lengths) of `n` examples, int64, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    if dist == "fixed":
        return np.full(n, 512, dtype=np.int64), np.full(n, 128, dtype=np.int64)
    if dist == "mlsum":
        source = np.clip(np.rint(rng.normal(900.0, 150.0, n)), 200, 1024)
        return source.astype(np.int64), rng.integers(20, 61, n)
    if dist == "sqac":
        return rng.integers(100, 481, n), rng.integers(2, 31, n)
    if dist == "miam":
        return rng.integers(10, 121, n), rng.integers(5, 41, n)
    raise UnknownNameError("length distribution", dist, DISTRIBUTIONS)


@dataclass
class SyntheticData:
    """Examples as a tokenized `datasets` split would hand them over: lists of ints."""
    examples: list[dict[str, list[int]]]
    source_lengths: np.ndarray
    target_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


def make_data(dist: str, n: int, vocab_size: int, first_plain_id: int, seed: int,
              max_source: int | None = None) -> SyntheticData:
    source_lengths, target_lengths = draw_lengths(dist, n, seed)
    if max_source is not None:
        source_lengths = np.minimum(source_lengths, max_source)
    generator = torch.Generator().manual_seed(seed + 1)
    total = int(source_lengths.sum() + target_lengths.sum())
    ids = torch.randint(first_plain_id, vocab_size, (total,), generator=generator).tolist()
    examples, at = [], 0
    for src, tgt in zip(source_lengths.tolist(), target_lengths.tolist()):
        examples.append({"input_ids": ids[at:at + src], "labels": ids[at + src:at + src + tgt]})
        at += src + tgt
    return SyntheticData(examples, source_lengths, target_lengths)


@dataclass(frozen=True)
class BatchTokens:
    """What one collated micro-batch costs: real tokens and the padded shapes computed."""
    batch: int
    source_len: int              # padded source length
    target_len: int              # padded target length
    real_tokens: int             # non-pad source tokens + non-pad target tokens

    @property
    def padded_tokens(self) -> int:
        return self.batch * (self.source_len + self.target_len)


def batch_tokens(batch: dict[str, torch.Tensor]) -> BatchTokens:
    """Token counts of a collated batch (input_ids/attention_mask/labels), without a device sync.

    Call it on the CPU tensors, before they are moved: counting on the GPU would wait for it.
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    source_real = int(batch["attention_mask"].sum()) if "attention_mask" in batch \
        else input_ids.numel()
    target_real = int((labels != LABEL_PAD).sum())
    return BatchTokens(int(input_ids.shape[0]), int(input_ids.shape[1]), int(labels.shape[1]),
                       source_real + target_real)


def padded_fraction(batches: list[BatchTokens]) -> float:
    """Pad tokens / all tokens computed, over these micro-batches (source plus target)."""
    padded = sum(b.padded_tokens for b in batches)
    return 1.0 - sum(b.real_tokens for b in batches) / padded if padded else 0.0
