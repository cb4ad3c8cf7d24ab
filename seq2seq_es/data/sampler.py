"""The order in which training examples are seen: a pure function of (seed, epoch), resumable.

One optimizer step consumes one *global batch* of `world_size * grad_accum * batch_size`
examples. Its indices are a contiguous slice of the epoch's permutation, and micro-batch `k` of
rank `r` takes the slice `[(k * world_size + r) * batch_size, ... + batch_size)` of it. So the
set of examples behind a step does not depend on how it is split over ranks and accumulation
steps, which is what makes the loss normalisation test (1x4x2 = 2x1x4 = 1x1x8) meaningful, and a
resumed run continues with exactly the batches the interrupted one would have drawn.

An incomplete last global batch is dropped (and the count logged by the caller): padding it with
repeated examples would weight them twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def per_epoch(steps: int) -> str:
    """'N steps per epoch', as every plan's summary says it ('1 step per epoch')."""
    return f"{steps} step{'' if steps == 1 else 's'} per epoch"


def dropped_note(count: int) -> list[str]:
    """The line every plan prints when an epoch leaves examples out (none when it does not)."""
    if not count:
        return []
    return [f"{count} training examples per epoch do not fill a last step and are left out of "
            "that epoch (the order changes each epoch)"]


@dataclass
class StepPlan:
    num_examples: int
    batch_size: int
    grad_accum: int
    world_size: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    @property
    def dropped_per_epoch(self) -> int:
        return self.num_examples - self.steps_per_epoch * self.global_batch

    def summary(self) -> list[str]:
        """What the trainer prints about the batches before training (every plan has it). The
        step's size is spelled out: train.batch_size is per rank, as the Trainer's per-device
        batch, so more ranks make a larger step under the same learning rate."""
        return [f"batches: {self.batch_size} examples per rank x {self.grad_accum} accumulated "
                f"x {self.world_size} rank(s) = {self.global_batch} per step, "
                f"{per_epoch(self.steps_per_epoch)}"] + dropped_note(self.dropped_per_epoch)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=generator)

    def micro_batches(self, epoch: int, step_in_epoch: int, rank: int) -> list[list[int]]:
        """The `grad_accum` micro-batches (example indices) of one step for one rank."""
        return self._split(self.epoch_order(epoch), step_in_epoch, rank)

    def _split(self, order: torch.Tensor, step_in_epoch: int, rank: int) -> list[list[int]]:
        start = step_in_epoch * self.global_batch
        step_indices = order[start:start + self.global_batch]
        out = []
        for k in range(self.grad_accum):
            offset = (k * self.world_size + rank) * self.batch_size
            out.append(step_indices[offset:offset + self.batch_size].tolist())
        return out

    def iter_steps(self, start_epoch: int, start_step_in_epoch: int, rank: int):
        """Yield (epoch, step_in_epoch, micro_batches) forever, from a saved position."""
        epoch, step = start_epoch, start_step_in_epoch
        while True:
            order = self.epoch_order(epoch)
            while step < self.steps_per_epoch:
                yield epoch, step, self._split(order, step, rank)
                step += 1
            epoch, step = epoch + 1, 0


def eval_batches(order: list[int], batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's evaluation batches: `order` cut into batches of `batch_size`, dealt to the
    ranks in turn (batch k to rank k mod W), then padded with one-slot batches of -1 to an equal
    count per rank.

    Whole batches are dealt, not examples, so a batch holds the same examples on any number of
    ranks: its padding, and so its bf16 numerics and its sampled draws (seeded per batch), are
    those of a one-process run. Every rank must run the same number of forward/generate calls
    (ZeRO-3 gathers parameters collectively); the padding's outputs are dropped at the gather.
    """
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    mine = batches[rank::world_size]
    per_rank = -(-len(batches) // world_size)
    return mine + [[-1]] * (per_rank - len(mine))
