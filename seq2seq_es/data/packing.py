"""Packed seq2seq batches (`train.batching=packed`): several examples per row, one fixed shape.

Every micro-batch is `rows` rows of `source_len` source tokens and `target_len` target tokens
(`train.batch_size`, `data.max_source_length`, `data.max_target_length`): a row holds as many
whole examples ("documents") as fit in both lengths, so short examples waste no padding and a
compiled model sees a single shape. The model must keep the documents apart, which
`kernels/packed_attention.py` does with the document ids this collator adds: encoder
self-attention within a source document, decoder self-attention causal within a target document,
cross-attention from target document k to source document k only, positions restarting at every
document. The loss is the usual token-summed cross-entropy over every document's label tokens.

The plan (`PackedPlan`, StepPlan's interface)
- Rows are laid out once from the lengths: examples sorted by the larger of their source and
  target fractions of a row, longest first, each placed in the first of the open rows it fits in
  (first-fit decreasing over a window of `window` open rows; when the window is full, the fullest
  row is closed). The layout depends only on the lengths.
- A step takes `rows * grad_accum * world_size` rows. When the row count is not a multiple of that,
  the row holding the most examples is split in two (its examples in layout order, halved), again
  and again until it is, so no example is left out; only when the rows hold too few examples for
  that is the incomplete last step dropped (counted in `dropped_per_epoch`, the same every epoch:
  the rows left out are drawn among the rows of the most common example count).
- Each epoch (seeded by seed and epoch): examples with the same (source, target) lengths trade
  places in the layout at random (so which equally long examples share a row changes), the rows are
  shuffled, and step s takes the s-th slice of rows; micro-batch k of rank r takes the rows
  `[(k * world_size + r) * rows, ... + rows)` of the step's slice, as in StepPlan. Every rank gets
  `grad_accum` micro-batches of exactly `rows` rows. The plan is a pure function of
  (lengths, rows, lengths of a row, grad_accum, world_size, seed, epoch): a resumed run draws
  exactly the remaining batches.
- A micro-batch is handed out as the example indices of its rows, row after row. The collator
  re-forms rows by next-fit over that list (a new row when the next example does not fit), which
  never needs more rows than the plan's: each next-fit row ends at or after the end of the plan's
  row of the same number, because the examples from its start to there are a part of that plan row.

The collator (`PackedCollator`) packs only features marked as packed training features: the
training split gets a `PACKED_FEATURE` column (`mark_packed`), while validation, test and
prediction batches (unmarked) are collated one example per row, as `Seq2SeqCollator` does, for the
loss and for generation. A packed batch holds:
- input_ids [rows, source_len] (pad id after the last document), attention_mask (1 on document
  tokens; the packed model reads the document ids instead),
- labels [rows, target_len]: each document's labels in place, -100 on padding,
- decoder_input_ids: per document, the decoder start token then that document's labels but the
  last (not the plain shift of the whole row, which would feed document k's last label to
  document k+1),
- source_doc_ids / target_doc_ids: the document's number within its row (0, 1, ...), -1 on
  padding; source_position_ids / target_position_ids: 0, 1, ... within each document, 0 on padding.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .collator import LABEL_PAD, Seq2SeqCollator
from .sampler import dropped_note, per_epoch
from .token_budget import StepIteration, _generator, check_plan_inputs

# Marks a feature of the training split as one to pack (see mark_packed).
PACKED_FEATURE = "packed_training_feature"
# The keys a packed batch adds to a plain one; the packed model forward consumes them.
PACKED_BATCH_KEYS = ("source_doc_ids", "target_doc_ids", "source_position_ids",
                     "target_position_ids")
PAD_DOC = -1

_SLOT_SHUFFLE, _ROW_ORDER = 0, 1
DEFAULT_WINDOW = 256


def next_fit_rows(source_lengths: Sequence[int], target_lengths: Sequence[int], source_len: int,
                  target_len: int) -> list[list[int]]:
    """Positions of the examples per row, in order: a new row when the next one does not fit."""
    rows: list[list[int]] = []
    used_s = used_t = 0
    for i, (s, t) in enumerate(zip(source_lengths, target_lengths)):
        if s > source_len or t > target_len:
            raise DataError(f"an example of {s} source and {t} target tokens does not fit a packed "
                            f"row of {source_len} + {target_len}", row=i)
        if rows and used_s + s <= source_len and used_t + t <= target_len:
            rows[-1].append(i)
            used_s, used_t = used_s + s, used_t + t
        else:
            rows.append([i])
            used_s, used_t = s, t
    return rows


def layout_rows(source_lengths: np.ndarray, target_lengths: np.ndarray, source_len: int,
                target_len: int, window: int = DEFAULT_WINDOW) -> list[list[int]]:
    """Example indices per row: first-fit decreasing over a window of open rows (see module doc)."""
    n = len(source_lengths)
    if n == 0:
        return []
    # Larger fraction of a row first: s/S vs t/T compared as s*T vs t*S (exact integers).
    size = np.maximum(source_lengths * target_len, target_lengths * source_len)
    order = np.lexsort((np.arange(n), -size))
    free_s = np.zeros(window, dtype=np.int64)
    free_t = np.zeros(window, dtype=np.int64)
    open_row = np.full(window, -1, dtype=np.int64)      # row number held by each window slot
    rows: list[list[int]] = []
    for i in order.tolist():
        s, t = int(source_lengths[i]), int(target_lengths[i])
        fits = (free_s >= s) & (free_t >= t) & (open_row >= 0)
        slot = int(fits.argmax())
        if not fits[slot]:
            empty = np.flatnonzero(open_row < 0)
            if empty.size:
                slot = int(empty[0])
            else:  # close the fullest open row (least room left, relative to a row)
                slot = int(np.argmin(free_s * target_len + free_t * source_len))
            open_row[slot] = len(rows)
            rows.append([])
            free_s[slot], free_t[slot] = source_len, target_len
        rows[int(open_row[slot])].append(i)
        free_s[slot] -= s
        free_t[slot] -= t
    return rows


class PackedPlan(StepIteration):
    """Micro-batches of `rows` packed rows each (StepPlan's interface; see the module doc)."""

    def __init__(self, source_lengths: Sequence[int], target_lengths: Sequence[int], rows: int,
                 source_len: int, target_len: int, grad_accum: int, world_size: int, seed: int,
                 window: int = DEFAULT_WINDOW):
        self.source_lengths, self.target_lengths = check_plan_inputs(
            source_lengths, target_lengths, grad_accum, world_size)
        if rows < 1:
            raise ConfigError("train.batch_size", f"packed rows must be at least 1, got {rows}")
        for name, values, limit, key in (
                ("source", self.source_lengths, source_len, "data.max_source_length"),
                ("target", self.target_lengths, target_len, "data.max_target_length")):
            if values.size and values.max() > limit:
                row = int(values.argmax())
                raise DataError(f"a {name} of {int(values[row])} tokens is longer than a packed "
                                f"row's {limit} ({key})", row=row)
        if self.source_lengths.size and self.source_lengths.min() < 1:
            # A target document without a source document would have no key to attend to.
            raise DataError("packed batching needs at least one source token per example",
                            row=int(self.source_lengths.argmin()))
        self.rows, self.source_len, self.target_len = rows, source_len, target_len
        self.grad_accum, self.world_size, self.seed = grad_accum, world_size, seed
        self.num_examples = len(self.source_lengths)

        layout = layout_rows(self.source_lengths, self.target_lengths, source_len, target_len,
                             window)
        per_step = self.rows_per_step
        missing = -len(layout) % per_step
        if missing and sum(len(row) - 1 for row in layout) >= missing:
            # Split the row holding the most examples (ties: the later row), again and again,
            # until the row count fills whole steps.
            heap = [(-len(row), -r) for r, row in enumerate(layout) if len(row) > 1]
            heapq.heapify(heap)
            for _ in range(missing):
                _, r = heapq.heappop(heap)
                row = layout[-r]
                half = len(row) // 2
                layout[-r] = row[:half]
                layout.append(row[half:])
                for index in (-r, len(layout) - 1):
                    if len(layout[index]) > 1:
                        heapq.heappush(heap, (-len(layout[index]), -index))
        self.dropped_rows = len(layout) % per_step
        self._layout = layout
        self._row_sizes = np.asarray([len(row) for row in layout], dtype=np.int64)
        self._steps = (len(layout) - self.dropped_rows) // per_step
        if self._steps == 0:
            raise ConfigError("train.batch_size", (
                f"the {self.num_examples} training examples pack into {len(layout)} rows of "
                f"{source_len} + {target_len} tokens, fewer than the {per_step} (batch_size {rows} "
                f"x grad_accum {grad_accum} x {world_size} ranks) one step takes; lower "
                "train.batch_size or train.grad_accum"))
        self._drop_size = self._choose_drop_size()
        self._dropped_examples = (self.dropped_rows * self._drop_size if self._drop_size > 0 else
                                  int(self._row_sizes[len(layout) - self.dropped_rows:].sum()))
        # Examples sorted by (source, target) length, ties by index: the slots that trade places.
        self._by_length = np.lexsort((np.arange(self.num_examples), self.target_lengths,
                                      self.source_lengths))
        self._epoch_cache: tuple[int, list[list[int]], list[int]] | None = None

    # -- sizes -----------------------------------------------------------------------------------

    @property
    def rows_per_step(self) -> int:
        return self.rows * self.grad_accum * self.world_size

    @property
    def num_rows(self) -> int:
        return len(self._layout)

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    @property
    def dropped_per_epoch(self) -> int:
        """Examples left out of every epoch: those of the incomplete last step, when rows could not
        be split to complete it (the same count every epoch; which examples changes)."""
        return self._dropped_examples

    # -- one epoch -------------------------------------------------------------------------------

    def _epoch(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """(rows of example indices for this epoch, order of the rows)."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            n = self.num_examples
            draw = torch.randperm(n, generator=_generator(self.seed, epoch, _SLOT_SHUFFLE)).numpy()
            shuffled = np.lexsort((draw, self.target_lengths, self.source_lengths))
            # The k-th example in (length, index) order sits where the k-th in (length, random)
            # order sat: only examples of equal lengths trade places.
            swap = np.empty(n, dtype=np.int64)
            swap[self._by_length] = shuffled
            rows = [swap[row].tolist() for row in self._layout]
            order = self._order_keeping_drop_count(epoch)   # left-out rows last
            self._epoch_cache = (epoch, rows, order)
        return self._epoch_cache[1], self._epoch_cache[2]

    def _choose_drop_size(self) -> int:
        """Rows are left out among the rows of the most common example count, so that the number
        of examples left out is the same every epoch; -1: no count has enough rows (then the last
        rows of the layout are left out)."""
        if not self.dropped_rows:
            return 0
        sizes, counts = np.unique(self._row_sizes, return_counts=True)
        return int(sizes[np.argmax(counts)]) if counts.max() >= self.dropped_rows else -1

    def _order_keeping_drop_count(self, epoch: int) -> list[int]:
        perm = torch.randperm(len(self._layout),
                              generator=_generator(self.seed, epoch, _ROW_ORDER)).tolist()
        if not self.dropped_rows:
            return perm
        if self._drop_size < 0:
            dropped = list(range(len(self._layout) - self.dropped_rows, len(self._layout)))
        else:
            dropped = [r for r in perm if self._row_sizes[r] == self._drop_size][:self.dropped_rows]
        dropped_set = set(dropped)
        return [r for r in perm if r not in dropped_set] + dropped

    def micro_batches(self, epoch: int, step_in_epoch: int, rank: int) -> list[list[int]]:
        """The `grad_accum` micro-batches (example indices, row after row) of one step of a rank."""
        return [[i for row in batch for i in row]
                for batch in self.micro_batch_rows(epoch, step_in_epoch, rank)]

    def micro_batch_rows(self, epoch: int, step_in_epoch: int, rank: int) -> list[list[list[int]]]:
        """The same micro-batches as lists of rows (the plan's rows; the collator re-forms them)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside world_size {self.world_size}")
        if not 0 <= step_in_epoch < self._steps:
            raise ValueError(f"step {step_in_epoch} is outside the epoch's {self._steps} steps")
        rows, order = self._epoch(epoch)
        start = step_in_epoch * self.rows_per_step
        out = []
        for k in range(self.grad_accum):
            first = start + (k * self.world_size + rank) * self.rows
            out.append([rows[r] for r in order[first:first + self.rows]])
        return out

    # -- padding ---------------------------------------------------------------------------------

    def packed_padding(self, epoch: int) -> float:
        """Pad tokens / all tokens of the epoch's micro-batches (source plus target)."""
        rows, order = self._epoch(epoch)
        kept = order[:self._steps * self.rows_per_step]
        real = sum(int(self.source_lengths[rows[r]].sum() + self.target_lengths[rows[r]].sum())
                   for r in kept)
        return 1.0 - real / (len(kept) * (self.source_len + self.target_len))

    def unpacked_padding(self, epoch: int) -> float:
        """For comparison: one example per row, `rows` random examples per micro-batch, padded to
        the longest (what train.batching=fixed does)."""
        order = torch.randperm(self.num_examples,
                               generator=_generator(self.seed, epoch, 2)).numpy()
        real = padded = 0
        for start in range(0, len(order) - self.rows + 1, self.rows):
            idx = order[start:start + self.rows]
            s, t = self.source_lengths[idx], self.target_lengths[idx]
            real += int(s.sum() + t.sum())
            padded += len(idx) * int(s.max() + t.max())
        return 1.0 - real / padded if padded else 0.0

    def summary(self) -> list[str]:
        packed, unpacked = self.packed_padding(0), self.unpacked_padding(0)
        lines = [self.describe(packed, unpacked), *dropped_note(self.dropped_per_epoch)]
        if packed > unpacked:
            lines.append(f"warning: packing pads more here than one example per row would "
                         f"({packed:.1%} vs {unpacked:.1%}): the examples are too long or too few "
                         f"to share rows of {self.source_len} + {self.target_len} tokens; "
                         "train.batching fixed or bucketed pads less")
        return lines

    def describe(self, packed: float | None = None, unpacked: float | None = None) -> str:
        packed = self.packed_padding(0) if packed is None else packed
        unpacked = self.unpacked_padding(0) if unpacked is None else unpacked
        return (f"packed batches: {self.num_examples} examples in {self.num_rows} rows of "
                f"{self.source_len} + {self.target_len} tokens, {self.rows} rows per micro-batch "
                f"x {self.grad_accum} accumulated x {self.world_size} rank(s) per step, "
                f"{per_epoch(self.steps_per_epoch)}; {packed:.1%} padding in "
                f"epoch 0 (one example per row, random order: {unpacked:.1%})")


def mark_packed(tokenized):
    """The training split with the PACKED_FEATURE column: its batches are packed by the collator."""
    if PACKED_FEATURE in tokenized.column_names:
        return tokenized
    return tokenized.add_column(PACKED_FEATURE, [True] * len(tokenized))


@dataclass
class PackedCollator(Seq2SeqCollator):
    """Packs marked features into [rows, source_len] / [rows, target_len]; plain otherwise."""

    rows: int = 1
    source_len: int = 0
    target_len: int = 0

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if features and features[0].get(PACKED_FEATURE):
            return self.pack(features)
        return super().__call__(features)

    def pack(self, features: list[dict]) -> dict[str, torch.Tensor]:
        source = [f["input_ids"] for f in features]
        target = [f["labels"] for f in features]
        rows = next_fit_rows([len(x) for x in source], [len(y) for y in target],
                             self.source_len, self.target_len)
        if len(rows) > self.rows:
            raise ValueError(f"{len(features)} features need {len(rows)} packed rows of "
                             f"{self.source_len} + {self.target_len} tokens, more than the "
                             f"{self.rows} of a micro-batch (features must come from PackedPlan)")
        shape_s, shape_t = (self.rows, self.source_len), (self.rows, self.target_len)
        input_ids = torch.full(shape_s, self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(shape_s, dtype=torch.long)
        source_doc = torch.full(shape_s, PAD_DOC, dtype=torch.long)
        source_pos = torch.zeros(shape_s, dtype=torch.long)
        labels = torch.full(shape_t, LABEL_PAD, dtype=torch.long)
        decoder_input_ids = torch.full(shape_t, self.pad_token_id, dtype=torch.long)
        target_doc = torch.full(shape_t, PAD_DOC, dtype=torch.long)
        target_pos = torch.zeros(shape_t, dtype=torch.long)
        for r, row in enumerate(rows):
            s0 = t0 = 0
            for doc, j in enumerate(row):
                ids = torch.as_tensor(source[j], dtype=torch.long)
                lab = torch.as_tensor(target[j], dtype=torch.long)
                if not len(ids):
                    # Its target document would have no source document to attend to.
                    raise DataError("packed batching needs at least one source token per example",
                                    row=j)
                s1, t1 = s0 + len(ids), t0 + len(lab)
                input_ids[r, s0:s1] = ids
                attention_mask[r, s0:s1] = 1
                source_doc[r, s0:s1] = doc
                source_pos[r, s0:s1] = torch.arange(len(ids))
                if len(lab):
                    labels[r, t0:t1] = lab
                    shifted = lab[:-1].masked_fill(lab[:-1] == LABEL_PAD, self.pad_token_id)
                    decoder_input_ids[r, t0] = self.decoder_start_token_id
                    decoder_input_ids[r, t0 + 1:t1] = shifted
                    target_doc[r, t0:t1] = doc
                    target_pos[r, t0:t1] = torch.arange(len(lab))
                s0, t0 = s1, t1
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
               "decoder_input_ids": decoder_input_ids, "source_doc_ids": source_doc,
               "target_doc_ids": target_doc, "source_position_ids": source_pos,
               "target_position_ids": target_pos}
        return out   # one static shape: never marked dynamic
