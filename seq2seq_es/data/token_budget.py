"""Token-budget batching: length-sorted micro-batches that fill a padded-token budget.

A drop-in alternative to `StepPlan` (same `steps_per_epoch`, `dropped_per_epoch`,
`micro_batches` and `iter_steps`), for data whose lengths vary: random-order batches of
MLSUM-like articles spend a fifth of their tokens on padding, length-sorted ones almost none.

How an epoch is laid out
- Examples are sorted by length: by source length in buckets of width w, then by target length,
  then by source length (or the same with source and target swapped). The orientation and w are
  the ones that pack into the fewest padded tokens, found once by a small search: w = 1 (a plain
  sort by source, then target) suits long articles, wider buckets suit short dialogue turns, where
  few examples share a source length and a plain sort leaves the targets of a batch spread out.
  Equal lengths are ordered by a permutation seeded by (seed, epoch), so which of several equally
  long examples land together changes every epoch.
- Sorted examples are packed greedily into micro-batches whose padded cost,
  `size * (max source length rounded up to pad_to_multiple_of + max target length)`, stays within
  `max_tokens`. An example that alone exceeds the budget becomes a micro-batch of its own and is
  listed in `oversize_examples`.
- Every step takes `world_size * grad_accum` micro-batches of neighbouring shapes (ordered by
  longest source, then longest target, so all of them have similar lengths), which are dealt to
  ranks largest-first, each to the rank with the fewest padded tokens so far that still has a
  free slot: every rank gets `grad_accum` micro-batches and about the same number of tokens, so
  none waits on a much longer batch.
- The order of the steps is shuffled per epoch (seeded by seed and epoch).

The sorted length sequence does not depend on the tie-break, so the micro-batch boundaries, the
grouping into steps and the rank assignment are computed once, by position in the sorted order;
an epoch only decides which example sits at each position and in which order the steps come. That
makes the number of steps the same every epoch and the whole plan a pure function of
(lengths, budget, grad_accum, world_size, seed, epoch): a resumed run draws exactly the batches the
interrupted one would have drawn.

When the number of micro-batches is not a multiple of the micro-batches per step, the micro-batches
holding the most examples are split in two until it is, so that no example is left out (the few
steps holding such halves are the only ones whose ranks may differ by half a micro-batch); only
when too few micro-batches hold two examples or more (all oversize singles, say) is the incomplete
last step dropped, and its examples counted in `dropped_per_epoch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .sampler import dropped_note, per_epoch

# Separate random streams per epoch: the length tie-break, the step order and the random-order
# comparison must not share draws, or changing one would change the others.
_TIE_BREAK, _STEP_ORDER, _RANDOM_ORDER = 0, 1, 2

_BUCKET_WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128)

# ("source" | "target", bucket width): sort by the primary length in buckets of that width,
# then by the other length, then by the primary length.
SortKey = tuple[str, int]


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


@dataclass(frozen=True)
class _Span:
    """A micro-batch: positions [start, end) of the epoch's sorted order, and its padded cost."""
    start: int
    end: int
    cost: int

    @property
    def size(self) -> int:
        return self.end - self.start


def pack_greedily(source_lengths: np.ndarray, target_lengths: np.ndarray, max_tokens: int,
                  pad_to_multiple_of: int = 1) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive examples whose padded cost stays within the budget.

    The lengths are in the order the examples are to be packed. An example that alone costs more
    than the budget gets a run of its own.
    """
    return _pack(source_lengths, target_lengths, max_tokens, pad_to_multiple_of)[0]


def _pack(source_lengths: np.ndarray, target_lengths: np.ndarray, max_tokens: int,
          pad_to_multiple_of: int) -> tuple[list[tuple[int, int]], int]:
    """(pack_greedily's runs, their total padded cost)."""
    src = _round_up_array(np.asarray(source_lengths, dtype=np.int64), pad_to_multiple_of)
    tgt = np.asarray(target_lengths, dtype=np.int64)
    spans: list[tuple[int, int]] = []
    total_cost = 0
    start, n = 0, len(src)
    while start < n:
        # A run of k examples costs at least k * (its first example's length): a bound on k.
        longest_run = max_tokens // max(int(src[start] + tgt[start]), 1) + 1
        stop = min(n, start + longest_run)
        width = np.maximum.accumulate(src[start:stop]) + np.maximum.accumulate(tgt[start:stop])
        cost = np.arange(1, stop - start + 1) * width      # non-decreasing in the run length
        size = max(int(np.searchsorted(cost, max_tokens, side="right")), 1)
        spans.append((start, start + size))
        total_cost += int(cost[size - 1])
        start += size
    return spans, total_cost


def _round_up_array(lengths: np.ndarray, multiple: int) -> np.ndarray:
    return -(-lengths // multiple) * multiple if multiple > 1 else lengths


def padded_cost(source_lengths: np.ndarray, target_lengths: np.ndarray,
                pad_to_multiple_of: int = 1) -> int:
    """Tokens in the padded batch of these examples: size * (max source + max target)."""
    if len(source_lengths) == 0:
        return 0
    longest_src = _round_up(int(source_lengths.max()), pad_to_multiple_of)
    return len(source_lengths) * (longest_src + int(target_lengths.max()))


def padded_fraction_of(batches: Sequence[Sequence[int]], source_lengths: Sequence[int],
                       target_lengths: Sequence[int], pad_to_multiple_of: int = 1) -> float:
    """Pad tokens / all tokens over these batches of example indices, padded per batch."""
    src, tgt = np.asarray(source_lengths), np.asarray(target_lengths)
    real = padded = 0
    for batch in batches:
        idx = np.asarray(batch, dtype=np.int64)
        real += int(src[idx].sum() + tgt[idx].sum())
        padded += padded_cost(src[idx], tgt[idx], pad_to_multiple_of)
    return 1.0 - real / padded if padded else 0.0


def _check_lengths(name: str, lengths: Sequence[int]) -> np.ndarray:
    values = np.asarray(lengths)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise DataError(f"{name} must be a flat list of token counts (ints)")
    if values.size and values.min() < 0:
        row = int(np.argmin(values))
        raise DataError(f"{name} holds a negative length ({int(values[row])})", row=row)
    return values.astype(np.int64)


def check_plan_inputs(source_lengths: Sequence[int], target_lengths: Sequence[int],
                      grad_accum: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The checks every length-aware plan (token budget, buckets, packing) makes of its common
    arguments; returns the lengths as int64 arrays."""
    sources = _check_lengths("source_lengths", source_lengths)
    targets = _check_lengths("target_lengths", target_lengths)
    if len(sources) != len(targets):
        raise DataError(f"{len(sources)} source lengths but {len(targets)} target lengths")
    if grad_accum < 1:
        raise ConfigError("train.grad_accum", f"must be at least 1, got {grad_accum}")
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    return sources, targets


def _deal_to_ranks(costs: list[int], world_size: int, grad_accum: int) -> list[list[int]]:
    """Indices into `costs`, grad_accum per rank, largest first to the least loaded free rank."""
    loads = [0] * world_size
    slots: list[list[int]] = [[] for _ in range(world_size)]
    for item in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        free = [r for r in range(world_size) if len(slots[r]) < grad_accum]
        rank = min(free, key=lambda r: (loads[r], r))
        slots[rank].append(item)
        loads[rank] += costs[item]
    return slots


class StepIteration:
    """`iter_steps` and `epoch_batches` of every plan that answers `micro_batches(epoch, step,
    rank)` and has `steps_per_epoch` and `world_size` (token-budget, bucketed, packed)."""

    def iter_steps(self, start_epoch: int, start_step_in_epoch: int,
                   rank: int) -> Iterator[tuple[int, int, list[list[int]]]]:
        """Yield (epoch, step_in_epoch, micro_batches) forever, from a saved position."""
        epoch, step = start_epoch, start_step_in_epoch
        while True:
            while step < self.steps_per_epoch:
                yield epoch, step, self.micro_batches(epoch, step, rank)
                step += 1
            epoch, step = epoch + 1, 0

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every micro-batch of the epoch (all ranks), in step order then rank order."""
        return [batch for step in range(self.steps_per_epoch) for rank in range(self.world_size)
                for batch in self.micro_batches(epoch, step, rank)]

    def _total_tokens(self) -> int:
        """Every example's source and target tokens, unpadded: what a budget too large for the
        training set is compared with in its refusal."""
        return int(self.source_lengths.sum() + self.target_lengths.sum())


def budget_step_note(plan) -> str:
    """How large a step of a token-budget plan (token-budget, bucketed) is: the budget is per
    micro-batch and rank, so more ranks or accumulation make a larger step."""
    return (f"batches: up to {plan.max_tokens} padded tokens per micro-batch x {plan.grad_accum} "
            f"accumulated x {plan.world_size} rank(s) per step, {per_epoch(plan.steps_per_epoch)}")


def oversize_note(count: int, largest: int, max_tokens: int) -> list[str]:
    """Examples that alone pad to more than the budget go one per micro-batch, over it: said,
    since "up to N padded tokens" is then not true, and the budget is what a user sizes to the
    memory of a card."""
    if not count:
        return []
    return [f"note: {count} training example(s) alone pad to more than train.max_tokens "
            f"{max_tokens} (the longest to {largest} tokens); each goes in a micro-batch of its "
            f"own, over the budget: set train.max_tokens to at least {largest}, or lower "
            "data.max_source_length / data.max_target_length, to keep every micro-batch within it"]


def budget_padding_note(plan, bucketed: bool = False) -> str:
    """The padding of epoch 0 beside that of a random order under the same budget (for a
    bucketed plan its own padding includes the rounding up to the buckets, the random order's
    does not: said, or the bucketed plan looked worse than a random order for no reason)."""
    if bucketed:
        return (f"bucketed batches: {plan.padded_fraction(0):.1%} padding in epoch 0, rounding "
                f"up to the buckets included (random order with the same budget and no "
                f"buckets: {plan.random_order_padded_fraction(0):.1%})")
    return (f"token-budget batches: {plan.padded_fraction(0):.1%} padding in epoch 0 (random "
            f"order with the same budget: {plan.random_order_padded_fraction(0):.1%})")


class TokenBudgetPlan(StepIteration):
    """Micro-batches under a padded-token budget, `world_size * grad_accum` of them per step."""

    def __init__(self, source_lengths: Sequence[int], target_lengths: Sequence[int],
                 max_tokens: int, grad_accum: int, world_size: int, seed: int,
                 pad_to_multiple_of: int = 1):
        self.source_lengths, self.target_lengths = check_plan_inputs(
            source_lengths, target_lengths, grad_accum, world_size)
        if max_tokens < 1:
            raise ConfigError("train.max_tokens",
                              f"must be a positive token count, got {max_tokens}")
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
        self.max_tokens, self.grad_accum, self.world_size = max_tokens, grad_accum, world_size
        self.seed, self.pad_to_multiple_of = seed, pad_to_multiple_of
        self.num_examples = len(self.source_lengths)

        self.sort_key = self._choose_sort_key()
        # Positions of the sorted order; any tie-break gives this same length sequence.
        by_length = np.lexsort(self._lexsort_keys(np.arange(self.num_examples)))
        self._sorted_src = self.source_lengths[by_length]
        self._sorted_tgt = self.target_lengths[by_length]
        spans = [self._span(a, b) for a, b in pack_greedily(
            self._sorted_src, self._sorted_tgt, max_tokens, pad_to_multiple_of)]
        self.oversize_examples: list[int] = sorted(
            int(by_length[s.start]) for s in spans if s.cost > max_tokens)
        self.largest_micro_batch = max(s.cost for s in spans)
        packed = len(spans)
        spans, dropped = self._fill_last_step(spans)
        self._dropped_spans = dropped
        # Micro-batches split in two to fill the last step: a step holding such halves may leave
        # a rank up to half a micro-batch lighter than the others.
        self.split_micro_batches = len(spans) + len(dropped) - packed
        self._steps = self._group_into_steps(spans)
        if not self._steps:
            raise ConfigError("train.max_tokens", (
                f"the {self.num_examples} training examples ({self._total_tokens()} source + "
                f"target tokens in all) fill only {len(spans) + len(dropped)} "
                f"micro-batches of {max_tokens} tokens, fewer than the "
                f"{self.micro_batches_per_step} "
                f"(world_size {world_size} x grad_accum {grad_accum}) one step takes; lower "
                "train.max_tokens or train.grad_accum"))
        self._epoch_cache: tuple[int, np.ndarray, list[int]] | None = None

    # -- layout (by position, the same every epoch) ------------------------------------------

    def _lexsort_keys(self, order: np.ndarray, sort_key: SortKey | None = None) -> tuple:
        """np.lexsort keys (last = primary) putting `order`'s examples in length order."""
        primary, width = sort_key or self.sort_key
        src, tgt = self.source_lengths[order], self.target_lengths[order]
        if primary == "source":
            return src, tgt, src // width
        return tgt, src, tgt // width

    def _choose_sort_key(self) -> SortKey:
        """The bucketing that packs into the fewest padded tokens, found by a small search.

        Sorting by source then target leaves the targets of a batch spread when few examples
        share a source length (short dialogue turns); bucketing the primary length by a width `w`
        and sorting by the other one inside a bucket trades source padding for target padding.
        For each primary, widths 1, 2, 4, ... are tried until the padded total stops falling.
        """
        every = np.arange(self.num_examples)
        best: tuple[int, SortKey] | None = None
        for primary in ("source", "target"):
            previous = None
            for width in _BUCKET_WIDTHS:
                key = (primary, width)
                order = np.lexsort(self._lexsort_keys(every, key))
                src, tgt = self.source_lengths[order], self.target_lengths[order]
                total = _pack(src, tgt, self.max_tokens, self.pad_to_multiple_of)[1]
                if best is None or total < best[0]:
                    best = (total, key)
                if previous is not None and total > previous:
                    break
                previous = total
        return best[1]

    def _span(self, start: int, end: int) -> _Span:
        return _Span(start, end, padded_cost(self._sorted_src[start:end],
                                             self._sorted_tgt[start:end], self.pad_to_multiple_of))

    @property
    def micro_batches_per_step(self) -> int:
        return self.world_size * self.grad_accum

    def _fill_last_step(self, spans: list[_Span]) -> tuple[list[_Span], list[_Span]]:
        """Split the fullest micro-batches until the count fills whole steps; else drop the rest."""
        per_step = self.micro_batches_per_step
        missing = -len(spans) % per_step
        if missing == 0:
            return spans, []
        splittable = sorted((k for k, s in enumerate(spans) if s.size >= 2),
                            key=lambda k: (-spans[k].size, k))
        if len(splittable) >= missing:
            to_split = set(splittable[:missing])
            out: list[_Span] = []
            for k, span in enumerate(spans):
                if k in to_split:
                    middle = span.start + span.size // 2
                    out += [self._span(span.start, middle), self._span(middle, span.end)]
                else:
                    out.append(span)
            return out, []
        keep = len(spans) - len(spans) % per_step
        return spans[:keep], spans[keep:]

    def _group_into_steps(self, spans: list[_Span]) -> list[list[list[_Span]]]:
        """steps[s][rank] = that rank's grad_accum micro-batches of step s.

        A step takes micro-batches of neighbouring shapes (longest source, then longest target):
        at equal padded tokens, a batch of long sequences still costs more attention than one of
        short ones, and bucketing by target can put very different sources side by side.
        """
        spans = sorted(spans, key=lambda s: (int(self._sorted_src[s.start:s.end].max()),
                                             int(self._sorted_tgt[s.start:s.end].max()), s.start))
        per_step = self.micro_batches_per_step
        steps = []
        for first in range(0, len(spans), per_step):
            group = spans[first:first + per_step]
            slots = _deal_to_ranks([s.cost for s in group], self.world_size, self.grad_accum)
            steps.append([[group[k] for k in rank_slots] for rank_slots in slots])
        return steps

    @property
    def steps_per_epoch(self) -> int:
        return len(self._steps)

    @property
    def dropped_per_epoch(self) -> int:
        """Examples left out of every epoch (0 unless the last step could not be filled)."""
        return sum(s.size for s in self._dropped_spans)

    # -- one epoch ---------------------------------------------------------------------------

    def _epoch(self, epoch: int) -> tuple[np.ndarray, list[int]]:
        """(example index at each sorted position, order of the steps) for this epoch."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            tie_break = torch.randperm(self.num_examples,
                                       generator=_generator(self.seed, epoch, _TIE_BREAK)).numpy()
            # lexsort is stable, so equal lengths keep the seeded random order.
            at_position = tie_break[np.lexsort(self._lexsort_keys(tie_break))]
            step_order = torch.randperm(
                self.steps_per_epoch, generator=_generator(self.seed, epoch, _STEP_ORDER)).tolist()
            self._epoch_cache = (epoch, at_position, step_order)
        return self._epoch_cache[1], self._epoch_cache[2]

    def micro_batches(self, epoch: int, step_in_epoch: int, rank: int) -> list[list[int]]:
        """The `grad_accum` micro-batches (example indices) of one step for one rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside world_size {self.world_size}")
        at_position, step_order = self._epoch(epoch)
        spans = self._steps[step_order[step_in_epoch]][rank]
        return [at_position[s.start:s.end].tolist() for s in spans]

    # -- padding -----------------------------------------------------------------------------

    def summary(self) -> list[str]:
        return [budget_step_note(self), *dropped_note(self.dropped_per_epoch),
                *oversize_note(len(self.oversize_examples), self.largest_micro_batch,
                               self.max_tokens),
                budget_padding_note(self)]

    def padded_fraction(self, epoch: int) -> float:
        """Pad tokens / all tokens of the epoch's padded micro-batches (source plus target).

        Read off the layout: an epoch only swaps examples of equal lengths, so the fraction is
        the same every epoch (the tests recompute it from the batches themselves).
        """
        spans = [span for step in self._steps for rank in step for span in rank]
        real_before = np.concatenate([[0], np.cumsum(self._sorted_src + self._sorted_tgt)])
        real = sum(int(real_before[s.end] - real_before[s.start]) for s in spans)
        padded = sum(s.cost for s in spans)
        return 1.0 - real / padded if padded else 0.0

    def random_order_batches(self, epoch: int) -> list[list[int]]:
        """For comparison: the same budget packed greedily over a random order of the examples."""
        order = torch.randperm(self.num_examples,
                               generator=_generator(self.seed, epoch, _RANDOM_ORDER)).numpy()
        spans = pack_greedily(self.source_lengths[order], self.target_lengths[order],
                              self.max_tokens, self.pad_to_multiple_of)
        return [order[a:b].tolist() for a, b in spans]

    def random_order_padded_fraction(self, epoch: int) -> float:
        return padded_fraction_of(self.random_order_batches(epoch), self.source_lengths,
                                  self.target_lengths, self.pad_to_multiple_of)
