"""Bucketed token-budget batching: few distinct micro-batch shapes, for compiled models.

`TokenBudgetPlan` packs length-sorted examples into micro-batches of whatever shape fits the
budget, so almost every micro-batch has a new (rows, source length, target length) shape: a
compiled model recompiles, and even eager CUDA kernels are selected anew (BENCHMARKS.md: token
budget rows 3-4x slower on the GPU). `BucketedPlan` keeps the padding low but lets a run see at most
`max_shapes` shapes:

Buckets
- Source lengths are rounded up to one of a few *source buckets*, target lengths to one of a few
  *target buckets*. Target buckets are multiples of `align` (8, for tensor cores); source
  buckets of lcm(8, the collator's multiple: LED's attention window), or of the window alone
  where the lcm would pad the longest source further (builders.source_bucket_align);
  `model.compile` does not change them. The largest bucket covers the longest example.
  `choose_buckets` picks the sets that waste the fewest pad tokens on these lengths with at
  most `max_shapes` (source bucket x target bucket) pairs: the pad tokens of an
  example are (its source bucket - its source length) + (its target bucket - its target length),
  a sum of a source term and a target term, so the best k source buckets and the best m target
  buckets are found independently (an exact dynamic programme over the rounded lengths each),
  and the grid size k x m <= max_shapes that wastes least is kept.
- A bucket pair (s, t) has a fixed row count, `max(1, max_tokens // (s + t))`: every micro-batch of
  the pair has the shape (rows, s, t), so the shapes of a run are at most the pairs of the grid.

Filling micro-batches (the layout depends only on the lengths, the budget and the ranks)
- Each example belongs to the pair of its own buckets. Pairs are filled in order of source bucket,
  then target bucket. A pair forms as many full micro-batches as its examples (its own plus those
  handed on to it) fill, but never more than it has own examples: the first row of each of its
  micro-batches is one of its own examples, so the micro-batch's longest source and target round
  up to exactly (s, t) and the collator, which rounds up to the next bucket, produces the pair's
  shape whatever else is in the batch.
- The remainder (fewer than a micro-batch) is handed on, padded up, to the next larger pair:
  (s, next target bucket), or from the largest target bucket to (next source bucket, same target).
  Both are at least as large in source and target, so a handed-on example only gains padding.
  A pair hands on less than one micro-batch, unless it has fewer own examples than micro-batches
  its pool would fill (a sparse pair under a dense one): then the surplus moves on as well. On
  MLSUM-like lengths this is a few dozen examples of thousands (tests/test_length_buckets.py).
- The remainder of the last pair (the largest) has nowhere to go and is left out of the epoch.
- Steps take `world_size * grad_accum` micro-batches; when the count is not a multiple of that,
  the surplus micro-batches (fewer than one step's) are left out, one at a time from the pair
  with the most micro-batches left, so that no length range loses a larger share of its
  examples than another. Splitting them, as TokenBudgetPlan does, would create new shapes.
  Both drops are counted in `dropped_per_epoch` (constant across epochs); which examples fall
  into them changes every epoch.

Every epoch, the examples of a pair are put in a random order seeded by (seed, epoch): which
examples share a micro-batch, which are handed on and which are left out changes every epoch, while
the number of steps stays the same. Steps are formed as in TokenBudgetPlan: micro-batches of
neighbouring shapes, dealt to ranks largest first (every rank gets `grad_accum` micro-batches per
step), the order of the steps shuffled per epoch. The plan is a pure function of
(lengths, max_tokens, grad_accum, world_size, seed, epoch, max_shapes, align): a resumed run
draws exactly the remaining batches.

Compiled models (`model.compile`), two choices to be measured against each other on a GPU:
- static (`torch.compile(dynamic=False)`): one graph per bucket shape. `allow_static_shapes`
  raises Dynamo's recompile limit (8 by default: the 9th shape would silently run uncompiled) and
  `warm_up_model` runs each of `shapes()` once before training (forward and backward, gradients
  cleared), so the compilations happen up front and are timed;
- dynamic: `Seq2SeqCollator.mark_dynamic` marks batch and length dimensions dynamic, one graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .sampler import dropped_note
from .token_budget import (StepIteration, _deal_to_ranks, _generator, check_plan_inputs,
                           budget_padding_note, budget_step_note, oversize_note, pack_greedily,
                           padded_fraction_of)

_TIE_BREAK, _STEP_ORDER, _RANDOM_ORDER = 0, 1, 2

DEFAULT_MAX_SHAPES = 16
DEFAULT_ALIGN = 8


def _round_up(values: np.ndarray, multiple: int) -> np.ndarray:
    return -(-values // multiple) * multiple


def best_buckets_1d(lengths: np.ndarray, max_count: int,
                    align: int = 1) -> list[tuple[list[int], int]]:
    """For k = 1..max_count: the <= k bucket values (multiples of `align`) wasting fewest pads.

    Returns [(sorted bucket values, pad tokens wasted)] indexed by k - 1; the largest value
    covers the longest length. Exact: one dynamic programme over the distinct rounded-up lengths
    (an optimal bucket value is always one of them).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return [([max(align, 1)], 0)] * max_count
    rounded = _round_up(np.maximum(lengths, 1), align)
    values, group = np.unique(rounded, return_inverse=True)
    m = len(values)
    n_at = np.bincount(group, minlength=m).astype(np.int64)            # examples per value
    sum_at = np.bincount(group, weights=lengths, minlength=m)          # their summed lengths
    n_before = np.concatenate([[0], np.cumsum(n_at)])
    sum_before = np.concatenate([[0.0], np.cumsum(sum_at)])
    top = min(max_count, m)
    # cost[k, j]: least waste of values[0..j] with k buckets, the largest at values[j].
    cost = np.full((top + 1, m), np.inf)
    choice = np.zeros((top + 1, m), dtype=np.int64)
    cost[1] = n_before[1:] * values - sum_before[1:]
    for k in range(2, top + 1):
        for j in range(k - 1, m):
            prev = np.arange(k - 2, j)                    # the previous bucket's value index
            # values[prev+1 .. j] padded up to values[j]
            waste = ((n_before[j + 1] - n_before[prev + 1]) * values[j]
                     - (sum_before[j + 1] - sum_before[prev + 1]))
            total = cost[k - 1][prev] + waste
            best = int(np.argmin(total))
            cost[k, j], choice[k, j] = total[best], prev[best]
    out = []
    for count in range(1, max_count + 1):
        k = int(np.argmin(cost[1:min(count, top) + 1, m - 1])) + 1
        chosen, j = [], m - 1
        for kk in range(k, 0, -1):
            chosen.append(int(values[j]))
            j = int(choice[kk, j])
        out.append((sorted(chosen), int(round(cost[k, m - 1]))))
    return out


@dataclass(frozen=True)
class Buckets:
    source: tuple[int, ...]
    target: tuple[int, ...]
    wasted: int                  # pad tokens of the examples rounded up to their own buckets

    @property
    def pairs(self) -> int:
        return len(self.source) * len(self.target)


def choose_buckets(source_lengths: Sequence[int], target_lengths: Sequence[int],
                   max_shapes: int = DEFAULT_MAX_SHAPES, align: int = DEFAULT_ALIGN,
                   source_align: int | None = None) -> Buckets:
    """Source and target bucket sets, at most `max_shapes` pairs, wasting the fewest pad tokens."""
    if max_shapes < 1:
        raise ConfigError("train.length_buckets", f"must be at least 1, got {max_shapes}")
    src = np.asarray(source_lengths, dtype=np.int64)
    tgt = np.asarray(target_lengths, dtype=np.int64)
    source_align = source_align or align
    by_count_src = best_buckets_1d(src, max_shapes, source_align)
    by_count_tgt = best_buckets_1d(tgt, max_shapes, align)
    best: Buckets | None = None
    for k in range(1, max_shapes + 1):
        (s, ws), (t, wt) = by_count_src[k - 1], by_count_tgt[max_shapes // k - 1]
        candidate = Buckets(tuple(s), tuple(t), ws + wt)
        # Fewer pairs win ties: fewer graphs to compile for the same padding.
        if best is None or (candidate.wasted, candidate.pairs) < (best.wasted, best.pairs):
            best = candidate
    return best


@dataclass(frozen=True)
class _MicroBatch:
    pair: int                    # index into BucketedPlan.pairs
    slot: int                    # its number among the pair's micro-batches


class BucketedPlan(StepIteration):
    """Token-budget micro-batches with shapes from a small bucket grid (StepPlan's interface)."""

    def __init__(self, source_lengths: Sequence[int], target_lengths: Sequence[int],
                 max_tokens: int, grad_accum: int, world_size: int, seed: int,
                 max_shapes: int = DEFAULT_MAX_SHAPES, align: int = DEFAULT_ALIGN,
                 source_align: int | None = None):
        self.source_lengths, self.target_lengths = check_plan_inputs(
            source_lengths, target_lengths, grad_accum, world_size)
        if max_tokens < 1:
            raise ConfigError("train.max_tokens",
                              f"must be a positive token count, got {max_tokens}")
        if align < 1 or (source_align is not None and source_align < 1):
            raise ValueError("align must be at least 1")
        self.max_tokens, self.grad_accum, self.world_size = max_tokens, grad_accum, world_size
        self.seed, self.max_shapes = seed, max_shapes
        self.num_examples = len(self.source_lengths)
        self.buckets = choose_buckets(self.source_lengths, self.target_lengths, max_shapes, align,
                                      source_align)
        src_b, tgt_b = self.buckets.source, self.buckets.target
        # Pairs in filling order (source bucket, then target bucket): (s, t, rows).
        self.pairs: list[tuple[int, int, int]] = [
            (s, t, max(1, max_tokens // (s + t))) for s in src_b for t in tgt_b]
        n_tgt = len(tgt_b)
        si = np.searchsorted(np.asarray(src_b), self.source_lengths, side="left")
        ti = np.searchsorted(np.asarray(tgt_b), self.target_lengths, side="left")
        self._own_pair = si * n_tgt + ti                 # each example's own pair
        own = np.bincount(self._own_pair, minlength=len(self.pairs))

        # Layout: micro-batches per pair and how many examples each pair hands on.
        self._made = [0] * len(self.pairs)
        self._next = [self._next_pair(p) for p in range(len(self.pairs))]
        handed = [0] * len(self.pairs)
        for p, (_, _, rows) in enumerate(self.pairs):
            pool = int(own[p]) + handed[p]
            made = min(pool // rows, int(own[p]))
            self._made[p] = made
            rest = pool - made * rows
            if self._next[p] is not None:
                handed[self._next[p]] += rest
            else:
                self.left_over_last_pair = rest
        micro = [_MicroBatch(p, k) for p in range(len(self.pairs)) for k in range(self._made[p])]
        per_step = self.micro_batches_per_step
        surplus = len(micro) % per_step
        # Surplus micro-batches are left out one at a time from the pair that has the most left,
        # so no pair (no length range) loses a larger share of its examples than the others.
        self._dropped: list[_MicroBatch] = []
        remaining = list(self._made)
        for _ in range(surplus):
            p = max(range(len(self.pairs)), key=lambda q: (remaining[q], q))
            remaining[p] -= 1
            self._dropped.append(_MicroBatch(p, remaining[p]))
        dropped = set(self._dropped)
        kept = [mb for mb in micro if mb not in dropped]
        self._steps = self._group_into_steps(kept)
        if not self._steps:
            raise ConfigError("train.max_tokens", (
                f"the {self.num_examples} training examples ({self._total_tokens()} source + "
                f"target tokens in all) fill only {len(micro)} bucketed "
                f"micro-batches of {max_tokens} tokens, fewer than the {per_step} "
                f"(world_size {world_size} x grad_accum {grad_accum}) one step takes; lower "
                "train.max_tokens or train.grad_accum"))
        self._epoch_cache: tuple[int, dict, list[int]] | None = None

    # -- layout --------------------------------------------------------------------------------

    def _next_pair(self, p: int) -> int | None:
        """The pair a remainder of pair p is handed on to: larger or equal in both lengths."""
        n_tgt = len(self.buckets.target)
        i, j = divmod(p, n_tgt)
        if j + 1 < n_tgt:
            return p + 1
        if i + 1 < len(self.buckets.source):
            return p + n_tgt
        return None

    def _cost(self, mb: _MicroBatch) -> int:
        s, t, rows = self.pairs[mb.pair]
        return rows * (s + t)

    def _group_into_steps(self, micro: list[_MicroBatch]) -> list[list[list[_MicroBatch]]]:
        """steps[s][rank] = that rank's grad_accum micro-batches: neighbouring shapes per step."""
        micro = sorted(micro, key=lambda mb: (self.pairs[mb.pair][:2], mb.slot))
        per_step = self.micro_batches_per_step
        steps = []
        for first in range(0, len(micro), per_step):
            group = micro[first:first + per_step]
            slots = _deal_to_ranks([self._cost(mb) for mb in group], self.world_size,
                                   self.grad_accum)
            steps.append([[group[k] for k in rank_slots] for rank_slots in slots])
        return steps

    @property
    def micro_batches_per_step(self) -> int:
        return self.world_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return len(self._steps)

    @property
    def dropped_per_epoch(self) -> int:
        """Examples left out of every epoch: the last pair's remainder and surplus micro-batches."""
        return self.left_over_last_pair + sum(self.pairs[mb.pair][2] for mb in self._dropped)

    def shapes(self) -> list[tuple[int, int, int]]:
        """Every (rows, source length, target length) a micro-batch of this plan has."""
        used = {mb.pair for step in self._steps for rank in step for mb in rank}
        return sorted({(self.pairs[p][2], self.pairs[p][0], self.pairs[p][1]) for p in used})

    # -- one epoch -----------------------------------------------------------------------------

    def _epoch(self, epoch: int) -> tuple[dict, list[int]]:
        """({(pair, slot): example indices}, order of the steps) for this epoch."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rank_of = torch.randperm(self.num_examples,
                                     generator=_generator(self.seed, epoch, _TIE_BREAK)).numpy()
            order = np.lexsort((rank_of, self._own_pair))     # by pair, random within a pair
            bounds = np.searchsorted(self._own_pair[order], np.arange(len(self.pairs) + 1))
            handed: list[list[int]] = [[] for _ in self.pairs]
            batches: dict[tuple[int, int], list[int]] = {}
            for p, (_, _, rows) in enumerate(self.pairs):
                own = order[bounds[p]:bounds[p + 1]].tolist()
                others = sorted(handed[p], key=lambda i: rank_of[i])
                pool = own + others
                made = self._made[p]
                fill = pool[made:]
                for k in range(made):
                    # One own example first: the batch's lengths round up to exactly this pair.
                    batches[(p, k)] = [pool[k]] + fill[k * (rows - 1):(k + 1) * (rows - 1)]
                rest = fill[made * (rows - 1):]
                if self._next[p] is not None:
                    handed[self._next[p]] += rest
            step_order = torch.randperm(
                self.steps_per_epoch, generator=_generator(self.seed, epoch, _STEP_ORDER)).tolist()
            self._epoch_cache = (epoch, batches, step_order)
        return self._epoch_cache[1], self._epoch_cache[2]

    def micro_batches(self, epoch: int, step_in_epoch: int, rank: int) -> list[list[int]]:
        """The `grad_accum` micro-batches (example indices) of one step for one rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside world_size {self.world_size}")
        batches, step_order = self._epoch(epoch)
        return [list(batches[(mb.pair, mb.slot)])
                for mb in self._steps[step_order[step_in_epoch]][rank]]

    def micro_batch_shapes(self, epoch: int, step_in_epoch: int,
                           rank: int) -> list[tuple[int, int, int]]:
        """(rows, source length, target length) of each of those micro-batches, once padded."""
        _, step_order = self._epoch(epoch)
        return [(self.pairs[mb.pair][2], self.pairs[mb.pair][0], self.pairs[mb.pair][1])
                for mb in self._steps[step_order[step_in_epoch]][rank]]

    # -- padding -------------------------------------------------------------------------------

    def padding(self, epoch: int) -> tuple[int, int]:
        """(real tokens, padded tokens) of the epoch's micro-batches at their bucket shapes."""
        batches, _ = self._epoch(epoch)
        real = padded = 0
        for step in self._steps:
            for rank in step:
                for mb in rank:
                    idx = np.asarray(batches[(mb.pair, mb.slot)])
                    real += int(self.source_lengths[idx].sum() + self.target_lengths[idx].sum())
                    padded += self._cost(mb)
        return real, padded

    def padded_fraction(self, epoch: int) -> float:
        """Pad tokens / all tokens of the epoch's padded micro-batches (source plus target)."""
        real, padded = self.padding(epoch)
        return 1.0 - real / padded if padded else 0.0

    def random_order_padded_fraction(self, epoch: int) -> float:
        """For comparison: the same budget packed greedily over a random order of the examples."""
        order = torch.randperm(self.num_examples,
                               generator=_generator(self.seed, epoch, _RANDOM_ORDER)).numpy()
        spans = pack_greedily(self.source_lengths[order], self.target_lengths[order],
                              self.max_tokens)
        return padded_fraction_of([order[a:b] for a, b in spans], self.source_lengths,
                                  self.target_lengths)

    def summary(self) -> list[str]:
        # A pair whose shape alone exceeds the budget holds one example per micro-batch.
        over = [(s + t, self._made[p]) for p, (s, t, _) in enumerate(self.pairs)
                if s + t > self.max_tokens and self._made[p]]
        return [self.describe(), budget_step_note(self), *dropped_note(self.dropped_per_epoch),
                *oversize_note(sum(made for _, made in over),
                               max((cost for cost, _ in over), default=0), self.max_tokens),
                budget_padding_note(self, bucketed=True)]

    def describe(self) -> str:
        return (f"length buckets: source {list(self.buckets.source)}, target "
                f"{list(self.buckets.target)}; {len(self.shapes())} micro-batch shapes")


def allow_static_shapes(num_shapes: int) -> None:
    """Let torch.compile keep one static graph per bucket shape.

    Dynamo recompiles a frame at most `recompile_limit` times (8 by default in torch 2.13) and runs
    it eagerly from then on, which would leave half of a 16-shape plan uncompiled. Twice the shape
    count is spare room: validation runs eagerly (Trainer.eval_stance), but a guard other than
    the shape (a grad mode, a flag) would add a graph per shape.
    """
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), 2 * num_shapes))


def warm_up_shapes(run_shape: Callable[[tuple[int, int, int]], None],
                   shapes: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int, int], float]:
    """Run each bucket shape once (compiling it), largest first; seconds per shape.

    `run_shape(shape)` must run one forward and backward of the compiled model on a batch of that
    shape and leave no trace in the weights or the optimizer (`warm_up_model` is one). Largest
    first: the allocator then reserves the largest blocks once.
    """
    seconds = {}
    for shape in sorted(shapes, key=lambda s: s[0] * (s[1] + s[2]), reverse=True):
        start = time.perf_counter()
        run_shape(shape)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds[shape] = time.perf_counter() - start
    return seconds


def warm_up_model(forward: Callable, parameters, shapes: Sequence[tuple[int, int, int]],
                  collator, token_id: int, device: torch.device | str = "cpu",
                  lean_ce: bool = False,
                  backward: Callable | None = None) -> dict[tuple[int, int, int], float]:
    """Compile every bucket shape before training: one forward and backward each, as train_step
    calls the model, with the gradients cleared afterwards (weights and optimizer untouched).

    `forward` is what train_step calls (the DeepSpeed engine, or a compiled module) and
    `parameters` the module's parameters; `backward(loss)` is `engine.backward` for an engine
    (DeepSpeed refuses a direct `loss.backward()` at ZeRO 0), a plain autograd backward by
    default. Right for ZeRO stage 0, where gradients live in `.grad`; ZeRO 1-3 hook gradients
    into their partitions, so there the shapes compile when first met instead.
    Returns seconds per shape (the compile time, for the GPU measurement).
    """
    from ..kernels.token_ce import token_ce_sum

    parameters = [p for p in parameters if p.requires_grad]
    allow_static_shapes(len(shapes))

    def run_shape(shape: tuple[int, int, int]) -> None:
        batch = collator(dummy_features(shape, token_id))
        batch = {key: value.to(device) for key, value in batch.items()}
        labels = batch.pop("labels")
        if lean_ce:
            ce = forward(**batch, lean_ce_labels=labels)
        else:
            ce = token_ce_sum(forward(**batch, use_cache=False).logits, labels)  # as trained
        (backward or torch.Tensor.backward)(ce * 0.0)
        for p in parameters:
            p.grad = None

    return warm_up_shapes(run_shape, shapes)


def dummy_features(shape: tuple[int, int, int], token_id: int) -> list[dict]:
    """Features whose collated batch has exactly this (rows, source, target) shape."""
    rows, src, tgt = shape
    return [{"input_ids": [token_id] * src, "labels": [token_id] * tgt} for _ in range(rows)]
