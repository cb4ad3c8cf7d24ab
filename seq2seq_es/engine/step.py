"""The training step: forward, backward and DeepSpeed's step over a step's micro-batches.

`TrainStep` is what the trainer and the bench's loop rows call for each step, so the benchmarked
step is the production step. Loss normalisation: a step's loss is the sum of token
cross-entropies over all its micro-batches on all ranks, divided by the number of target tokens
in all of them. DeepSpeed divides each backward by the accumulation steps and averages gradients
over ranks, so each micro-batch's token-summed loss is multiplied by
`world_size * grad_accum / tokens_in_step` before backward; the resulting update does not depend
on how the step is split (1x4x2 = 2x1x4 = 1x1x8).

Host read-backs: none per micro-batch. The scale is computed on the device, the logged loss, the
gradient norm and the non-finite flags are accumulated there and read once per logging interval
(and the flags before every evaluation and save).

The gradient norm (`train/grad_norm`, as the Hugging Face Trainer logs it): the L2 norm of the
step's whole gradient (averaged over ranks, summed over micro-batches, unscaled) before clipping,
the same number however the step is split. Where it comes from (DeepSpeed 0.19.8):
- ZeRO 1-2 (DeepSpeedZeroOptimizer, fp32/bf16/fp16) and ZeRO-1 bf16 with fp32 accumulation
  (BF16_Optimizer): the optimizer computes it before clipping, also with gradient_clipping 0
  (zero_optimization.compute_grad_norm is on by default), as a device tensor over all ranks'
  partitions, divided by the fp16 loss scale: `engine.get_global_grad_norm()` after the step.
- ZeRO 3: the same, except that fp16 divides by the loss scale after the step's scale update
  (a step that grows the scale would log half its norm): multiplied back here by new/old scale.
- ZeRO 0 (our torch AdamW; bf16/fp16 are torch autocast): DeepSpeed keeps none (its
  clip_fp32_gradients drops the norm it computes, and computes none without clipping), so it is
  computed here from the parameters' gradients after the step's last backward (reduced over
  ranks by then, still unclipped), divided by the GradScaler's scale under fp16.
A step whose gradient says nothing of its data is left out of the mean and the maximum: an fp16
overflow (update skipped, DeepSpeed reports inf) and an on_nan=skip step that skipped every
micro-batch (zero gradient; the optimizer still runs, see TrainStep).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..errors import Seq2SeqEsError
from ..kernels.read_free_masks import builds_read_free_masks, drop_full_mask
from . import distributed as D
from .loss import token_ce_sum
from .optim import fp16_step_skipped, loss_scale


class NonFiniteLoss(Seq2SeqEsError):
    """A non-finite loss with train.on_nan=stop (the message names the step and batch)."""


def host_token_counts(micro_batches: list[dict]) -> tuple[list[float], list[float]]:
    """This rank's [target, source, padded] tokens, and each micro-batch's target tokens (what
    on_nan=skip takes out of the logged loss's divisor), from the CPU batches (numpy: host
    memory, no device involved)."""
    targets, source, padded = [], 0, 0
    for batch in micro_batches:
        labels = batch["labels"].numpy()
        targets.append(float((labels != -100).sum()))
        source += int(batch["attention_mask"].numpy().sum())
        padded += labels.size + batch["input_ids"].numel()
    return [sum(targets), float(source), float(padded)], targets


def uses_fp16(engine) -> bool:
    """fp16 at ZeRO 0 (torch autocast with DeepSpeed's GradScaler) or under ZeRO."""
    return getattr(engine, "torch_autocast_z0_gradscaler", None) is not None \
        or engine.fp16_enabled()


def clips_in_train_step(engine) -> bool:
    """Whether TrainStep clips the gradient rather than DeepSpeed (ZeRO 0 outside fp16; see
    TrainStep.__init__); get_engine then sets the engine's own clipping to 0."""
    return not engine.zero_optimization() and not uses_fp16(engine)


def all_reduce_(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """In-place all-reduce of a device tensor, never read back: on a GPU the host does not wait."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op)
    return tensor


def keep_grads_out_of_graph_memory(module: torch.nn.Module,
                                   owned: dict[torch.nn.Parameter, torch.Tensor]) -> None:
    """Copy each parameter's gradient that is not yet a copy of ours (`owned`: parameter -> the
    copy it holds, which this adds to) into memory of its own, in one fused op. The copies are
    known by identity, not by id(): an id is reused once its tensor is freed.

    Under CUDA graphs (model.compile_mode reduce-overhead) a backward's gradients are outputs of
    the replayed graph, in the graph's memory pool, and autograd keeps a parameter's first
    gradient of a step as its `.grad` without copying it. The next micro-batch's replay writes
    its own gradients into that same memory, and autograd then adds them to a `.grad` they have
    just overwritten: 2 x the second gradient instead of the sum (torch 2.13 refuses such an
    access; earlier versions may not notice). So after each micro-batch but the last, the step
    moves the new gradients out; later micro-batches add into those copies in place (a `.grad`
    that exists is accumulated into, not replaced), so in practice all is copied once, after the
    first. With one micro-batch per step the optimizer reads the gradients before the next
    replay, and nothing is copied."""
    params = [p for p in module.parameters() if p.grad is not None and owned.get(p) is not p.grad]
    if not params:
        return
    copies = torch._foreach_mul([p.grad for p in params], 1.0)
    for param, copy in zip(params, copies):
        param.grad = copy
        owned[param] = copy


@dataclass
class StepResult:
    """One step's numbers, left on the device until `TrainStep.read` reads them."""
    step: int                      # 1-based number of the step
    counts: torch.Tensor           # [target, source, padded] tokens over all ranks (float64)
    ce: torch.Tensor               # this rank's token-summed loss of the kept micro-batches
    skipped: torch.Tensor          # micro-batches skipped (non-finite on any rank), all ranks agree
    skipped_tokens: torch.Tensor   # this rank's target tokens in the skipped micro-batches
    fp16: dict = field(default_factory=dict)  # overflow_skipped, loss_scale (host values)
    # The step's gradient norm (float64, on the device); None where the step had none to log
    # (an fp16 overflow, or DeepSpeed told not to compute it), 0 for a step on_nan=skip
    # skipped entirely (not counted either).
    grad_norm: torch.Tensor | None = None


class TrainStep:
    """The training step: what the trainer and the bench's loop rows call for each step.

    Nothing is read back from the device per micro-batch. The loss is normalised on the device
    (the step's target tokens over all ranks come from the CPU labels, summed by one on-device
    all-reduce), the logged loss and the non-finite flags are accumulated on the device, and
    `read` (once per logging interval) and `check_finite` (also before every save and
    evaluation) are the only read-backs. Micro-batches go to the GPU from pinned memory without
    blocking the host.

    Non-finite losses (train.on_nan):
    - stop: each rank keeps a device count of its non-finite micro-batches and the first one's
      index; `check_finite` all-reduces them and raises NonFiniteLoss naming the step, the
      micro-batch and the rank it was on, whose error (the only one printed) gives its shape.
      Until then training goes on (at most train.log_every steps), and nothing is saved,
      evaluated or exported from weights a non-finite step touched.
    - skip: one on-device all-reduce per micro-batch (a collective, no read-back) tells every
      rank whether any rank's loss is non-finite; a gradient hook on every trainable parameter
      then replaces that micro-batch's gradient by exact zeros (masked_fill: NaN-free, unlike a
      device-side choice between the loss and a zero loss, whose NaN branch still sends
      0 * NaN = NaN through the graph's backward). Healthy micro-batches' gradients pass
      unchanged. The hooks run before the gradient is accumulated, so DeepSpeed's accumulation
      and reduction hooks (after accumulation) see zeros. ZeRO-3 is refused (config.py).
      The logged loss is over the kept tokens (NaN for a step that kept none). The update is
      not renormalised: the step's divisor (its planned target tokens) was fixed before the
      first backward, so a step that
      skipped some micro-batches moves by the kept ones' gradient scaled by kept/planned tokens
      (Adam largely normalises that away); a step that skipped all of them still runs the
      optimizer on zero gradients (momentum moves the weights, as after any zero gradient).
      Renormalising or skipping the update would need a read-back before the step's last
      backward.
    fp16 at ZeRO 0 reads the GradScaler's scale after each optimizer step (twice: in
    optim.fp16_step_skipped and for the next step's comparison): a skipped optimizer step must
    take the learning-rate schedule back before the next step; torch's GradScaler itself reads
    its inf flag once per optimizer step. Per step, never per micro-batch.
    """

    def __init__(self, engine, env: D.DistEnv, cfg: RunConfig):
        self.engine, self.env, self.cfg = engine, env, cfg
        self.device = env.device
        self.pin = self.device.type == "cuda"
        self.skip = cfg.train.on_nan == "skip"
        self.fp16 = uses_fp16(engine)
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.bad = zero.clone()                              # stop: non-finite since the check
        self.first_bad = torch.full((), float("inf"), dtype=torch.float64, device=self.device)
        self.window = torch.zeros(2, dtype=torch.float64, device=self.device)  # tokens, padded
        # The window's tokens restored from a checkpoint (trained by an earlier process): in the
        # padded fraction, not in this process's tokens per second
        self.carried_tokens = 0.0
        # The logged loss's sums since the last read: this rank's cross-entropy and skipped
        # target tokens, and the target tokens of all ranks (a read gives the interval's loss
        # per target token, as the Trainer logs a logging interval's mean, not one step's).
        self.loss_window = torch.zeros(3, dtype=torch.float64, device=self.device)
        # The gradient norm's sums since the last read: [sum, steps counted, maximum] (the same
        # on every rank: each step's norm is already over all ranks).
        self.grad_norm_window = torch.zeros(3, dtype=torch.float64, device=self.device)
        # Skipped micro-batches (all ranks agree) and fp16 overflow steps since the last read:
        # counts over the interval, not its last step's (one early in a log_every 10 interval
        # was logged as 0).
        self.skipped_window = torch.zeros((), dtype=torch.float64, device=self.device)
        self.overflows = 0
        # ZeRO 0 steps our torch optimizer, which keeps no norm: computed from the gradients
        # (see the module docstring); every ZeRO optimizer keeps its own.
        self.norm_from_grads = not engine.zero_optimization()
        # Listed once: walking the module tree for them every step cost about 0.3 ms of host
        # time at BART-base's 259 tensors (host-overhead audit). ZeRO 0 keeps these objects.
        self.parameters = list(engine.module.parameters()) if self.norm_from_grads else []
        # ZeRO 0 outside fp16: the step clips the gradient itself, by the norm it computes for
        # the log anyway, in two fused device ops. DeepSpeed's stage-0 clipping
        # (runtime.utils.clip_grad_norm_) loops over the parameters twice in Python and builds two
        # tensors from host numbers every step: each such copy waits for the backward to finish,
        # and the GPU then idles while the loops launch one small kernel per parameter. (fp16 at
        # ZeRO 0 keeps DeepSpeed's: its GradScaler must unscale first. ZeRO 1-3 clip their flat
        # partitions.) get_engine turned DeepSpeed's own off (clips_in_train_step); the saved
        # DeepSpeed config still says gradient_clipping = optim.max_grad_norm.
        self.clip_norm = cfg.optim.max_grad_norm if clips_in_train_step(engine) else 0.0
        # model.compile_mode reduce-overhead: each forward starts a new CUDA-graph iteration,
        # so that replaying a graph may reuse the memory of the previous micro-batch's outputs
        # (read by then: the loss is copied out before its backward, and the gradients are
        # moved out before the next replay: keep_grads_out_of_graph_memory).
        self.graph_steps = cfg.model.compile and cfg.model.compile_mode == "reduce-overhead"
        # ZeRO 1-2 with accumulation under graphs is refused (config.py): their optimizers keep
        # gradients in buffers of their own
        self.copies_graph_grads = self.graph_steps and not engine.zero_optimization()
        # BART and T5 on model.attention sdpa build their masks without device reads
        # (kernels/read_free_masks.py): a micro-batch without source padding goes without its
        # mask (what transformers' read-back would have decided), decided from the CPU batch.
        # Not under model.compile: a batch's inputs would then depend on its values, and every
        # shape whose batches can be full would compile a second graph during training (the
        # warm-up's dummy batches are padded).
        self.host_inputs = drop_full_mask \
            if builds_read_free_masks(engine.module) and not cfg.model.compile \
            else (lambda batch: batch)
        self.micro_seen = 0                                  # micro-batches run by this object
        self.unchecked: dict[int, tuple[int, int, str]] = {}  # index -> (step, k, batch shape)
        self.unchecked_steps: list[int] = []
        self.skip_now = torch.zeros((), dtype=torch.bool, device=self.device)
        self.scale = None                                    # fp16: the loss scale in force
        self.hooks = []
        if self.skip:
            for p in engine.module.parameters():
                if p.requires_grad:
                    self.hooks.append(p.register_hook(self._mask_grad))

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(self.skip_now, 0)

    def close(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def __call__(self, micro_batches: list[dict], step: int) -> StepResult:
        """Run step `step + 1` (forward, backward and DeepSpeed's step per micro-batch)."""
        engine, device = self.engine, self.device
        totals, micro_tokens = host_token_counts(micro_batches)
        counts = all_reduce_(self._to_device(torch.tensor(totals, dtype=torch.float64)))
        # world_size * grad_accum / target tokens of the step (see the module docstring), in the
        # loss's fp32 as a Python float scale would be
        scale = (self.env.world_size * len(micro_batches) / counts[0].clamp(min=1.0)).float()
        self.window += torch.stack([counts[0] + counts[1], counts[2]])
        ce_total = torch.zeros((), dtype=torch.float64, device=device)
        skipped = torch.zeros((), dtype=torch.float64, device=device)
        skipped_tokens = torch.zeros((), dtype=torch.float64, device=device)
        if not self.skip:
            self.unchecked_steps.append(step + 1)
        fp16, scale_before = {}, None
        if self.fp16:  # see optim.py: was the optimizer step skipped for overflowing gradients?
            if self.scale is None:  # afterwards, the scale read at the end of the last step
                self.scale = loss_scale(engine)
            scale_before, skipped_before = self.scale, engine.skipped_steps
        own_norm = None
        copied: dict = {}            # parameter -> its gradient moved out of CUDA graphs' memory
        for k, batch in enumerate(micro_batches):
            batch = {key: self._to_device(value)
                     for key, value in self.host_inputs(batch).items()}
            labels = batch.pop("labels")
            shape = f"source {tuple(batch['input_ids'].shape)}, target {tuple(labels.shape)}"
            try:
                if self.graph_steps:
                    torch.compiler.cudagraph_mark_step_begin()
                if self.cfg.model.lean_ce:  # through engine(...): DeepSpeed hooks its output
                    ce = engine(**batch, lean_ce_labels=labels)
                else:  # no decoder cache: nothing reads it, and filling it costs launches
                    ce = token_ce_sum(engine(**batch, use_cache=False).logits, labels,
                                      self.cfg.optim.label_smoothing)
                value = ce.detach().double()
                bad = ~torch.isfinite(value)
                if self.skip:  # every rank skips a micro-batch that is bad on any rank
                    bad = all_reduce_(bad.double(), dist.ReduceOp.MAX) > 0
                    self.skip_now = bad
                    skipped += bad.double()
                    skipped_tokens += bad.double() * micro_tokens[k]
                else:
                    self.bad += bad.double()
                    self.first_bad = torch.minimum(self.first_bad, torch.where(
                        bad, float(self.micro_seen), float("inf")))
                    self.unchecked[self.micro_seen] = (step + 1, k, shape)
                self.micro_seen += 1
                ce_total += torch.where(bad, 0.0, value)
                engine.backward(ce * scale)
                if self.copies_graph_grads and k < len(micro_batches) - 1:
                    keep_grads_out_of_graph_memory(engine.module, copied)
                if self.norm_from_grads and k == len(micro_batches) - 1:
                    # the step's gradient is complete (and reduced) only after its last
                    # backward, and is clipped (here or by engine.step()) in place
                    grads = [p.grad for p in self.parameters if p.grad is not None]
                    own_norm = self._norm_of_grads(grads)
                    if self.clip_norm and grads:
                        self._clip(grads, own_norm)
                engine.step()
            except torch.OutOfMemoryError as exc:
                raise Seq2SeqEsError(
                    f"out of memory at step {step + 1} on batch {shape}: lower train.batch_size "
                    "(and raise train.grad_accum to keep the step size), lower "
                    "data.max_source_length, or set model.gradient_checkpointing=true; the run "
                    "resumes from its checkpoint with them (--train.resume auto; a SLURM run: "
                    "seq2seq-es slurm resume RUN -- --train.batch_size B --train.grad_accum A)"
                    ) from exc
        if self.fp16:  # the scale the next step uses; 1 if this one was skipped
            fp16["overflow_skipped"] = int(fp16_step_skipped(engine, scale_before, skipped_before))
            fp16["loss_scale"] = self.scale = loss_scale(engine)
        self.loss_window += torch.stack([ce_total, skipped_tokens, counts[0]])
        self.skipped_window += skipped
        self.overflows += fp16.get("overflow_skipped", 0)
        grad_norm = None
        if not fp16.get("overflow_skipped"):
            grad_norm = (self._unscaled(own_norm, scale_before) if self.norm_from_grads
                         else self._deepspeed_norm(scale_before))
        if grad_norm is not None:
            # a step that skipped every micro-batch trained on a zero gradient: not counted
            counted = (skipped < len(micro_batches)).double()
            grad_norm = torch.where(counted > 0, grad_norm, 0.0)
            sums = self.grad_norm_window
            self.grad_norm_window = torch.stack(
                [sums[0] + grad_norm, sums[1] + counted, torch.maximum(sums[2], grad_norm)])
        return StepResult(step + 1, counts, ce_total, skipped, skipped_tokens, fp16, grad_norm)

    def _norm_of_grads(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The L2 norm of the module's gradients (`grads`) as they are, accumulated in float64 as
        DeepSpeed's ZeRO optimizers accumulate theirs (in fp32 the norm of a [1501, 64]
        embedding gradient was off by 1.6e-5 relative on the CPU). torch's fused per-tensor
        norms, the private op its own clip_grad_norm_ runs (one launch for many tensors on a
        GPU); nothing read back, and non-finite gradients give a non-finite norm, no error."""
        if not grads:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        norms = torch._foreach_norm(grads, 2, dtype=torch.float64)
        return torch.linalg.vector_norm(torch.stack(norms))

    def _clip(self, grads: list[torch.Tensor], norm: torch.Tensor) -> None:
        """Scale `grads` by min(1, max_norm / (norm + 1e-6)), as torch's clip_grad_norm_ and
        DeepSpeed's do, with the norm in fp32 as theirs; on the device, nothing read back."""
        coefficient = (self.clip_norm / (norm.float() + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, coefficient)

    def _unscaled(self, norm: torch.Tensor, scale_before: float | None) -> torch.Tensor:
        """ZeRO 0: fp16's gradients carry the GradScaler's scale of the step's backward passes
        (the host value read at the end of the last step; no new read)."""
        return norm / scale_before if self.fp16 else norm

    def _deepspeed_norm(self, scale_before: float | None) -> torch.Tensor | None:
        """ZeRO 1-3: the norm the optimizer computed in its step (a device tensor; None where
        zero_optimization.compute_grad_norm is off)."""
        value = self.engine.get_global_grad_norm()
        if value is None:
            return None
        if torch.is_tensor(value):
            norm = value.detach().to(device=self.device, dtype=torch.float64)
        else:  # a Python number (inf after an overflow, which is not counted anyway)
            norm = torch.full((), float(value), dtype=torch.float64, device=self.device)
        if self.fp16 and self.engine.zero_optimization_stage() == 3 and scale_before:
            # DeepSpeed 0.19.8's stage 3 divides by the scale after the step's update (ZeRO 1-2
            # by the one before): the scale the gradients carried is the one before.
            norm = norm * (self.scale / scale_before)
        return norm

    def loss_window_sums(self) -> list[float]:
        """The logged values' sums since the last read over all ranks, for a checkpoint:
        [cross-entropy, skipped target tokens, target tokens, gradient norm sum, steps counted
        in it, gradient norm maximum, tokens, padded tokens]. A resume goes on from them, so
        that its first logged loss, gradient norm and padded fraction cover the same steps as an
        uninterrupted run's. Collective."""
        ranks = all_reduce_(self.loss_window[:2].clone())
        return torch.cat([ranks, self.loss_window[2:], self.grad_norm_window,
                          self.window]).tolist()

    def restore_loss_window(self, sums: list[float] | None) -> None:
        """Resume from `loss_window_sums` (already over all ranks: rank 0 takes the rank sums,
        every rank the global target count and the gradient norm's sums). A checkpoint from
        before the gradient norm (three numbers) starts its norm window empty: the first logged
        norm after the resume then covers the resumed steps only; one from before the token
        counts (six), its padded fraction."""
        if not sums:
            return
        ce, skipped_tokens, target = sums[:3]
        local = [ce, skipped_tokens] if self.env.rank == 0 else [0.0, 0.0]
        self.loss_window = torch.tensor([*local, target], dtype=torch.float64, device=self.device)
        if len(sums) >= 6:
            self.grad_norm_window = torch.tensor(sums[3:6], dtype=torch.float64,
                                                 device=self.device)
        if len(sums) >= 8:  # tokens and padded tokens: summed over ranks as counted
            self.window = torch.tensor(sums[6:8], dtype=torch.float64, device=self.device)
            self.carried_tokens = float(sums[6])

    def check_finite(self) -> None:
        """on_nan=stop: raise NonFiniteLoss if any rank had a non-finite loss since the last
        check. Collective: every rank calls it at the same step (the steps run are the same)."""
        if self.skip or not self.unchecked_steps:
            return
        first, last = self.unchecked_steps[0], self.unchecked_steps[-1]
        # The earliest bad micro-batch over all ranks, and the lowest rank that had it: one
        # maximum of -(index * ranks + rank) (micro-batches are counted alike on every rank).
        ranks = self.env.world_size
        flags = all_reduce_(torch.stack([(self.bad > 0).double(),
                                         -(self.first_bad * ranks + self.env.rank)]),
                            dist.ReduceOp.MAX)
        any_bad, minus_first = flags.tolist()
        self.bad.zero_()
        self.first_bad.fill_(float("inf"))
        unchecked, self.unchecked, self.unchecked_steps = self.unchecked, {}, []
        if not any_bad:
            return
        index, bad_rank = divmod(int(-minus_first), ranks)
        bad_step, k, shape = unchecked[index]
        mine = bad_rank == self.env.rank
        where = (f"micro-batch {k}" + (f" of rank {bad_rank}" if ranks > 1 else "")
                 + (f" (batch {shape})" if mine else ""))
        error = NonFiniteLoss(
            f"non-finite loss at step {bad_step}, {where} (steps {first}-{last} checked at "
            f"once; nothing after step {bad_step - 1} was saved); set train.on_nan=skip to skip "
            "such batches")
        # Said by the rank whose batch it was (each rank named its own, healthy, batch)
        error.said_elsewhere = not mine
        raise error

    def read(self, result: StepResult) -> dict[str, float]:
        """The loss since the last read (per target token kept), the step's counts, the tokens
        since the last read (`new_tokens`: those this object trained, without a restored
        window's), the micro-batches skipped and fp16 overflow steps since the last read (the
        loss scale: the last step's), and the gradient norm's mean and maximum over the
        optimizer steps since the last read (absent when none counted: see the module
        docstring); one read-back."""
        self.check_finite()
        summed = all_reduce_(self.loss_window[:2].clone())
        values = torch.cat([summed, self.loss_window[2:], result.counts,
                            self.skipped_window.view(1), self.window,
                            self.grad_norm_window]).tolist()
        self.window.zero_()
        self.loss_window.zero_()
        self.grad_norm_window.zero_()
        self.skipped_window.zero_()
        fp16 = {**result.fp16, "overflow_skipped": self.overflows} if result.fp16 else {}
        self.overflows = 0
        (ce_sum, skipped_tokens, window_target, target, source, padded, skipped, window_tokens,
         window_padded, norm_sum, norm_steps, norm_max) = values
        new_tokens, self.carried_tokens = window_tokens - self.carried_tokens, 0.0
        kept = window_target - skipped_tokens  # a window that skipped everything: unknown
        norms = {"grad_norm": norm_sum / norm_steps, "grad_norm_max": norm_max} \
            if norm_steps > 0 else {}
        return {"loss": ce_sum / kept if kept > 0 else float("nan"), "target_tokens": target,
                "tokens": target + source, "padded_tokens": padded,
                "skipped_micro_batches": int(skipped), "window_tokens": window_tokens,
                "new_tokens": new_tokens,
                "window_padded": window_padded, **norms, **fp16}


def train_step(engine, micro_batches: list[dict], env: D.DistEnv, cfg: RunConfig,
               step: int) -> dict[str, float]:
    """One step read back at once (tests, scripts): TrainStep without the deferred reads."""
    runner = TrainStep(engine, env, cfg)
    try:
        return runner.read(runner(micro_batches, step))
    finally:
        runner.close()
