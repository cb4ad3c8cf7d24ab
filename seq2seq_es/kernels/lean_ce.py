"""A memory-lean token-summed cross-entropy computed straight from the decoder's hidden states.

With a 50k-row vocabulary the logits dominate a seq2seq step's activation memory: the model's
route keeps `[tokens, V]` logits in bf16, then the loss makes an fp32 copy, keeps its log-softmax
for backward and builds an fp32 gradient of the same size. `chunked_cross_entropy_sum` instead
walks over the target tokens `chunk_size` rows at a time: for each chunk it forms the logits, takes
the log-sum-exp in fp32, and at once turns them into the chunk's gradients (softmax minus one-hot),
which are multiplied into gradients for the hidden states, the LM-head weight and its bias. Only
those three gradients live on until backward, which just scales them by the incoming gradient, so
no `[tokens, V]` tensor survives a chunk and the head's matmul is not recomputed. Rows whose label
is -100 go through the matmuls as every row does (as through the model's own head) and are masked
out of the loss and the gradients: dropping them would take a device read per call (their count
sets the kept rows' shape), and give a compiled model a new shape at every batch.

Matmuls run in the inputs' dtype (or the autocast dtype when autocast is on, as the model's
`lm_head` would), the softmax and the loss in fp32: the value matches
`F.cross_entropy((hidden @ weight.T + bias).float(), labels, reduction="sum", ignore_index=-100)`.

Which hidden state, weight, bias and scale, per family (read from transformers 5's sources; each
family adapter's `lm_head` and `decoder_hidden_states` in models/family.py, found from the
model's `config.model_type`):

- BART / LED: the last hidden state of `model.model(...)` / `model.led(...)`; `lm_head.weight`
  and the `final_logits_bias` buffer ([1, V]); scale 1.
- T5: the last hidden state of `model.decoder(...)` (after its final norm); `lm_head.weight`, no
  bias; scale d_model**-0.5 when `config.scale_decoder_outputs` (original T5, tied head), else 1
  (v1.1, whose checkpoints carry a head of their own).
- EncoderDecoder with a BERT decoder: `decoder.bert(...)` then `cls.predictions.transform`
  (dense, activation, norm); `cls.predictions.decoder.weight` and `.bias`; scale 1.
- EncoderDecoder with a RoBERTa decoder: `decoder.roberta(...)` then `lm_head`'s dense, gelu and
  layer norm; `lm_head.decoder.weight` and `.bias`; scale 1.

`lm_head_parts(model)` returns (weight, bias, scale), `decoder_hidden_states(model, batch)` the
hidden state, and `lean_token_ce_sum(model, batch, labels)` puts them together.

In the training loop the loss must still come out of the DeepSpeed engine's forward (it scales
gradients for accumulation and runs ZeRO-3's parameter gathering around it).
`install_lean_loss(model)` gives the model a forward that returns this loss when called with
`lean_ce_labels=labels` and is the model's own forward otherwise (generation, evaluation), and
registers the LM-head weight as used by the whole model, DeepSpeed's documented way to have
ZeRO-3 gather a parameter read outside its own module (checked on two ranks in the tests).
"""

from __future__ import annotations

import contextlib
import functools
import types
from typing import Mapping

import torch


IGNORE_INDEX = -100

# Collator keys the decoder forward reads; `labels` and `example_index` are not model inputs.
_NOT_MODEL_INPUTS = frozenset({"labels", "example_index"})


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the model's lm_head matmul would run in: autocast's, else the inputs'."""
    device_type = hidden.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, label_i), gradients formed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, ignored: torch.Tensor, chunk_size: int, grad_enabled: bool,
                smoothing: float) -> torch.Tensor:
        # labels: a valid id on every row (0 where `ignored`), ignored: [N] bool
        # needs_input_grad ignores no_grad mode; evaluation must not pay for gradients.
        need_hidden, need_weight, need_bias = (grad_enabled and need
                                               for need in ctx.needs_input_grad[:3])
        dtype = _compute_dtype(hidden, weight)
        w = weight.to(dtype)
        b = bias.float() if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
            if need_bias else None
        device_type = hidden.device.type   # (the meta device, which tests use, has no autocast)
        no_autocast = torch.autocast(device_type, enabled=False) \
            if torch.amp.is_autocast_available(device_type) else contextlib.nullcontext()
        with no_autocast:
            for start in range(0, hidden.size(0), chunk_size):
                h = hidden[start:start + chunk_size].to(dtype)
                y = labels[start:start + chunk_size]
                skip = ignored[start:start + chunk_size]
                logits = (h @ w.T).float()
                if b is not None:
                    logits += b
                log_normaliser = torch.logsumexp(logits, dim=-1)
                nll = log_normaliser - logits.gather(1, y[:, None]).squeeze(1)
                if smoothing:  # (1 - e) nll + e x mean over the vocabulary of -log p
                    uniform = log_normaliser - logits.mean(dim=-1)
                    nll = (1.0 - smoothing) * nll + smoothing * uniform
                # where(), not a product: an ignored row's inf (overflowing logits) gives no NaN
                total += torch.where(skip, 0.0, nll).sum()
                if not (need_hidden or need_weight or need_bias):
                    continue
                # d(loss)/d(logits) = softmax - (1 - e) one_hot - e / V, in place over the logits.
                grad_logits = logits.sub_(log_normaliser[:, None]).exp_()
                grad_logits[torch.arange(y.numel(), device=y.device), y] -= 1.0 - smoothing
                if smoothing:
                    grad_logits -= smoothing / grad_logits.size(1)
                grad_logits.masked_fill_(skip[:, None], 0.0)
                if need_bias:
                    grad_bias += grad_logits.sum(0)
                grad_logits = grad_logits.to(dtype)
                if need_hidden:
                    grad_hidden[start:start + chunk_size] = grad_logits @ w
                if need_weight:
                    grad_weight += (grad_logits.T @ h).float()
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grads = []
        for grad, dtype in zip(ctx.grads, ctx.dtypes):
            grads.append(None if grad is None else (grad * grad_total).to(dtype))
        ctx.grads = None
        return grads[0], grads[1], grads[2], None, None, None, None, None


def chunked_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                              bias: torch.Tensor | None = None, chunk_size: int = 4096,
                              label_smoothing: float = 0.0) -> torch.Tensor:
    """Token-summed CE (labels of -100 ignored) of `hidden @ weight.T + bias`, in fp32, label
    smoothed as token_ce_sum.

    hidden [N, d], weight [V, d], labels [N], bias [V] or [1, V] (BART's final_logits_bias).
    The [N, V] logits exist only `chunk_size` rows at a time; gradients flow to hidden, weight
    and bias (where they require it).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1):
        raise ValueError(f"expected hidden [N, d] and weight [V, d], got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden {tuple(hidden.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    vocab = weight.size(0)
    if bias is not None:
        if bias.numel() != vocab:
            raise ValueError(f"bias has {bias.numel()} entries for a vocabulary of {vocab}")
        bias = bias.reshape(vocab)
    ignored = labels == IGNORE_INDEX
    if labels.device.type == "cpu" and not torch.compiler.is_compiling():
        # Checked where reading the labels costs nothing. On a GPU it would make the host wait
        # at every call, and under torch.compile break the graph; there an id out of range
        # stops the gather with a device-side assert (the collators' labels come from the
        # model's own tokenizer, checked against its vocabulary when the model loads).
        targets = labels[~ignored]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
            raise ValueError(f"labels must be {IGNORE_INDEX} or in [0, {vocab}), got values in "
                             f"[{int(targets.min())}, {int(targets.max())}]")
    return _LinearCrossEntropySum.apply(hidden, weight, bias, labels.masked_fill(ignored, 0),
                                        ignored, chunk_size, torch.is_grad_enabled(),
                                        float(label_smoothing))


# ---------------------------------------------------------------------------------------------
# Where a model keeps the pieces


def _family(model):
    """The model's family adapter (models/family.py), which knows where its head is."""
    from ..models.family import family_of_model

    return family_of_model(model, kind="lean-CE model type")


def lm_head_parts(model) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """(weight [V, d], bias [V] or [1, V] or None, hidden_scale) of the vocabulary projection.

    logits = (decoder_hidden_states(model, batch) * hidden_scale) @ weight.T + bias
    """
    return _family(model).lm_head(model)


def _model_inputs(batch: Mapping[str, torch.Tensor], allowed: frozenset[str],
                  family: str) -> dict[str, torch.Tensor]:
    inputs = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
    unexpected = sorted(set(inputs) - allowed)
    if unexpected:
        raise ValueError(f"batch keys {unexpected} are not inputs of a {family} model "
                         f"(expected some of {sorted(allowed)})")
    if "decoder_input_ids" not in inputs:
        raise ValueError("the batch has no decoder_input_ids (the collator builds them from "
                         "labels)")
    return inputs


def decoder_hidden_states(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B, T, d]: what the model feeds its vocabulary projection, before `hidden_scale`."""
    family = _family(model)
    return family.decoder_hidden_states(model, _model_inputs(batch, family.model_inputs,
                                                             family.model_type))


# The chunked loss run by Python, outside any compiled graph: its chunk loop counts the target
# tokens, so a graph traced with dynamic lengths guards on the exact count and compiles again for
# every new one (token-budget batches: a graph per batch, then eager code once torch's recompile
# limit is reached). Outside, the model's graph ends at the hidden states and serves every
# length; the loss's kernels are matmuls that gain nothing from compilation.
_chunked_outside_graph = torch.compiler.disable(chunked_cross_entropy_sum)


def lean_token_ce_sum(model, batch: Mapping[str, torch.Tensor], labels: torch.Tensor,
                      chunk_size: int = 4096, label_smoothing: float = 0.0,
                      in_graph: bool = True) -> torch.Tensor:
    """The same value as `token_ce_sum(model(**batch).logits, labels, label_smoothing)`,
    without the logits. `in_graph` False keeps the loss out of a compiled graph (for dynamic
    lengths, see _chunked_outside_graph)."""
    hidden = decoder_hidden_states(model, batch)
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the decoder's "
                         f"{tuple(hidden.shape[:2])} positions")
    weight, bias, hidden_scale = lm_head_parts(model)
    rows = hidden.reshape(-1, hidden.size(-1))
    if hidden_scale != 1.0:
        rows = rows * hidden_scale
    chunked = chunked_cross_entropy_sum if in_graph else _chunked_outside_graph
    return chunked(rows, weight, labels.reshape(-1).to(rows.device), bias, chunk_size,
                   label_smoothing)


# ---------------------------------------------------------------------------------------------
# Wiring into the DeepSpeed engine's forward


def install_lean_loss(model, chunk_size: int = 4096, label_smoothing: float = 0.0,
                      in_graph: bool = True) -> None:
    """Make `model(**batch, lean_ce_labels=labels)` return `lean_token_ce_sum` (a 0-dim tensor).

    Without that keyword the model's own forward runs, so generation and evaluation are
    unchanged; the replacement keeps the original signature for transformers' introspection.
    Call once, before or after `deepspeed.initialize`; `uninstall_lean_loss` undoes it.
    `in_graph` False: a compiled forward ends before the loss (dynamic lengths; see
    lean_token_ce_sum).
    """
    _family(model)
    original = type(model).forward

    @functools.wraps(original)
    def forward(self, *args, lean_ce_labels: torch.Tensor | None = None, **kwargs):
        if lean_ce_labels is None:
            return original(self, *args, **kwargs)
        if args:
            raise TypeError("pass the batch as keyword arguments together with lean_ce_labels")
        return lean_token_ce_sum(self, kwargs, lean_ce_labels, chunk_size, label_smoothing,
                                 in_graph)

    model.forward = types.MethodType(forward, model)
    _register_head_with_zero3(model)


def uninstall_lean_loss(model) -> None:
    if "forward" in vars(model):
        del model.forward


def _register_head_with_zero3(model) -> None:
    """Declare the LM-head weight (and a BERT-style bias) used by the top model's forward.

    DeepSpeed documents this for a parameter read outside its own module's forward, as the lean
    loss does; 0.19 also gathers such reads on access, but this does not rely on that. Only
    ZeRO-3 reads the registration.
    """
    try:
        from deepspeed.zero import register_external_parameter
    except ImportError:
        return
    weight, bias, _ = lm_head_parts(model)
    for tensor in (weight, bias):
        if isinstance(tensor, torch.nn.Parameter):
            register_external_parameter(model, tensor)

