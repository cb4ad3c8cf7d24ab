"""Document-masked attention for packed batches (`train.batching=packed`), BART and T5 families.

A packed row holds several examples ("documents", data/packing.py). `install_packed_attention`
makes a BART-family (`BartAttention`, `BartLearnedPositionalEmbedding`) or T5-family
(`T5Attention`) model keep them apart when a batch carries the packed collator's document ids:

- encoder self-attention: a query sees the keys of its own source document only;
- decoder self-attention: causal, within its own target document;
- cross-attention: target document k sees source document k only;
- BART's learned positions restart at every document (the collator's position ids);
- T5's relative-position bias is computed from row positions: it depends only on key minus query
  position, which is the same within a document wherever the document sits in the row, and the
  mask removes every pair across documents. (tests/test_packing.py checks both families against
  the same examples unpacked: equal loss and gradients.)

Padding queries (document id -1) attend to padding keys in self-attention and to key 0 in
cross-attention, so no row is empty; their outputs never reach a real token and their labels are
-100.

How the ids travel. The trainer calls `engine(**batch)`; a forward pre-hook on the model takes the
four id tensors (and the now redundant attention_mask) out of the call and makes one
`PackedLayout` for it. Pre-hooks on the encoder and decoder stacks hand the layout on as a keyword
argument, which transformers passes down through every layer to the attention modules (so gradient
checkpointing recomputes with the same layout), and turn the decoder's KV cache off. BART's
position embeddings read the layout of the call in progress; the model's forward hook ends it.
A call without the ids (validation loss, generation) runs the modules' previous forward unchanged.
With `model.lean_ce` the same hooks run (the lean loss calls the stacks).

Masks are made once per batch and kind (encoder, decoder, cross) from one `mask_mod` per kind:
- "flex": FlexAttention with a BlockMask from `create_block_mask` (T5: the bias table as a
  score_mod; BART: the module's scaling). Compiled on CUDA, as the T5 kernel does. FlexAttention
  has no attention dropout and no backward on the CPU.
- "dense": `scaled_dot_product_attention` with the same mask_mod evaluated densely as a boolean
  [B, 1, q, k] mask (T5: folded with the bias into one additive mask, as transformers does).
- "auto" (what the engine installs): flex on CUDA, dense on the CPU and wherever attention dropout
  is on in training (T5 trains with dropout_rate 0.1: dense, with dropout, rather than refused).

The swap changes the class of the existing modules to a subclass of their class (whatever kernel
they had: T5's sdpa/flex swap included), so every Parameter and state_dict key stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from ..errors import ConfigError, UnknownNameError

IMPLS = ("auto", "dense", "flex")
# Keys of a packed batch (data/packing.py PACKED_BATCH_KEYS), in the order PackedLayout takes them.
PACKED_BATCH_KEYS = ("source_doc_ids", "target_doc_ids", "source_position_ids",
                     "target_position_ids")
LAYOUT_KWARG = "seq2seq_es_packed_layout"
_STATE_ATTR = "_seq2seq_es_packing"
_ROLE_ATTR = "_seq2seq_es_packing_role"
KINDS = ("encoder", "decoder", "cross")


# ----------------------------------------------------------------------------------------------
# One batch's documents and its masks


class PackedLayout:
    """Document and position ids of one packed batch; its masks, made once per kind."""

    def __init__(self, source_doc_ids: Tensor, target_doc_ids: Tensor, source_position_ids: Tensor,
                 target_position_ids: Tensor):
        if source_doc_ids.dim() != 2 or target_doc_ids.dim() != 2 \
                or source_doc_ids.shape[0] != target_doc_ids.shape[0]:
            raise ValueError(f"packed document ids must be [rows, source] and [rows, target], got "
                             f"{tuple(source_doc_ids.shape)} and {tuple(target_doc_ids.shape)}")
        if source_position_ids.shape != source_doc_ids.shape \
                or target_position_ids.shape != target_doc_ids.shape:
            raise ValueError("packed position ids must have the shapes of the document ids")
        self.source_doc = source_doc_ids.long()
        self.target_doc = target_doc_ids.long()
        self.source_pos = source_position_ids.long()
        self.target_pos = target_position_ids.long()
        self._dense: dict[str, Tensor] = {}
        self._block: dict[str, BlockMask] = {}
        self._folded: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def rows(self) -> int:
        return self.source_doc.shape[0]

    def length(self, role: str) -> int:
        return (self.source_doc if role == "source" else self.target_doc).shape[1]

    def positions(self, role: str) -> Tensor:
        return self.source_pos if role == "source" else self.target_pos

    def shape(self, kind: str) -> tuple[int, int]:
        """(query length, key length) of an attention of this kind."""
        s, t = self.length("source"), self.length("target")
        return {"encoder": (s, s), "decoder": (t, t), "cross": (t, s)}[kind]

    def mask_mod(self, kind: str) -> Callable:
        source, target = self.source_doc, self.target_doc
        if kind == "encoder":
            def allowed(b, h, q, k):
                return source[b, q] == source[b, k]
        elif kind == "decoder":
            def allowed(b, h, q, k):
                return (target[b, q] == target[b, k]) & (k <= q)
        elif kind == "cross":
            def allowed(b, h, q, k):
                doc = target[b, q]
                return ((doc == source[b, k]) & (doc >= 0)) | ((doc < 0) & (k == 0))
        else:
            raise UnknownNameError("packed attention kind", kind, KINDS)
        return allowed

    def dense_mask(self, kind: str, device: torch.device) -> Tensor:
        """Boolean [B, 1, q, k]: the mask_mod evaluated on every (query, key) pair."""
        if kind not in self._dense:
            q_len, k_len = self.shape(kind)
            doc_device = self.source_doc.device
            b = torch.arange(self.rows, device=doc_device)[:, None, None, None]
            h = torch.zeros((), dtype=torch.long, device=doc_device)
            q = torch.arange(q_len, device=doc_device)[None, None, :, None]
            k = torch.arange(k_len, device=doc_device)[None, None, None, :]
            self._dense[kind] = self.mask_mod(kind)(b, h, q, k).to(device)
        return self._dense[kind]

    def block_mask(self, kind: str, device: torch.device) -> BlockMask:
        if kind not in self._block:
            q_len, k_len = self.shape(kind)
            self._block[kind] = create_block_mask(self.mask_mod(kind), B=self.rows, H=None,
                                                  Q_LEN=q_len, KV_LEN=k_len, device=device)
        return self._block[kind]

    def folded(self, kind: str, bias: Tensor, dtype: torch.dtype) -> Tensor:
        """T5's dense path: the bias where the mask allows, the dtype's minimum elsewhere, once per
        bias tensor (the first layer's is handed on to the others)."""
        cached = self._folded.get(kind)
        if cached is None or cached[0] is not bias:
            mask = self.dense_mask(kind, bias.device)
            cached = (bias, torch.where(mask, bias.to(dtype), torch.finfo(dtype).min))
            self._folded[kind] = cached
        return cached[1]

    def check(self, kind: str, query: Tensor, keys: Tensor) -> None:
        expected = (self.rows, *self.shape(kind))
        got = (query.shape[0], query.shape[-2], keys.shape[-2])
        if got != expected:
            raise ValueError(f"packed {kind} attention over (rows, queries, keys) {got}, but the "
                             f"batch's documents are laid out for {expected}")


# ----------------------------------------------------------------------------------------------
# The attention itself


class _State:
    """Per model: the implementation, the layout of the call in progress, what was swapped."""

    def __init__(self, impl: str):
        self.impl = impl
        self.current: PackedLayout | None = None
        self.swapped: list[nn.Module] = []
        self.handles: list[Any] = []


def _use_flex(module: nn.Module, query: Tensor, dropout: float) -> bool:
    impl = getattr(module, _STATE_ATTR).impl
    if impl == "dense":
        return False
    if impl == "flex":
        if dropout > 0:
            raise ConfigError("train.batching", f"packed FlexAttention has no attention dropout, "
                              f"but the model trains with {dropout}; use the dense packed "
                              "attention or set the dropout to 0")
        return True
    return query.is_cuda and dropout == 0


def _attend(module: nn.Module, layout: PackedLayout, kind: str, query: Tensor, keys: Tensor,
            values: Tensor, scale: float, dropout: float, bias: Tensor | None) -> Tensor:
    """[B, H, q, d] attention output; `bias` (T5) is [1, H, q, k], added to the scores."""
    layout.check(kind, query, keys)
    if _use_flex(module, query, dropout):
        from .t5_attention import _dense_bias_mod, _flex_kernel
        score_mod = None if bias is None else _dense_bias_mod(bias[0])
        return _flex_kernel(query.device)(query, keys, values, score_mod=score_mod,
                                          block_mask=layout.block_mask(kind, query.device),
                                          scale=scale)
    if bias is None:
        mask = layout.dense_mask(kind, query.device)
    else:
        mask = layout.folded(kind, bias, query.dtype)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=dropout,
                                          scale=scale)


def _heads(states: Tensor, heads: int, head_dim: int) -> Tensor:
    batch, length, _ = states.shape
    return states.view(batch, length, heads, head_dim).transpose(1, 2)


def _refuse_cache(cache) -> None:
    if cache is not None:
        raise ValueError("packed batches are for training: no KV cache (the decoder stack's hook "
                         "turns use_cache off)")


def _bart_forward(module: nn.Module, layout: PackedLayout, hidden_states: Tensor,
                  key_value_states: Tensor | None = None, cache=None, attention_mask=None,
                  **_ignored) -> tuple[Tensor, None]:
    _refuse_cache(cache)
    kind = "cross" if key_value_states is not None else (
        "decoder" if module.is_decoder else "encoder")
    source = hidden_states if key_value_states is None else key_value_states
    query = _heads(module.q_proj(hidden_states), module.num_heads, module.head_dim)
    keys = _heads(module.k_proj(source), module.num_heads, module.head_dim)
    values = _heads(module.v_proj(source), module.num_heads, module.head_dim)
    dropout = module.dropout if module.training else 0.0
    attended = _attend(module, layout, kind, query, keys, values, module.scaling, dropout, None)
    batch, length = hidden_states.shape[:2]
    return module.out_proj(attended.transpose(1, 2).reshape(batch, length, -1)), None


def _t5_forward(module: nn.Module, layout: PackedLayout, hidden_states: Tensor, mask=None,
                key_value_states: Tensor | None = None, position_bias: Tensor | None = None,
                cache=None, **_ignored) -> tuple[Tensor, Tensor | None, None]:
    _refuse_cache(cache)
    is_cross = key_value_states is not None
    kind = "cross" if is_cross else ("decoder" if module.is_decoder else "encoder")
    source = hidden_states if not is_cross else key_value_states
    heads, head_dim = module.n_heads, module.key_value_proj_dim
    query = _heads(module.q(hidden_states), heads, head_dim)
    keys = _heads(module.k(source), heads, head_dim)
    values = _heads(module.v(source), heads, head_dim)
    bias = None
    if not is_cross:
        # The first layer of a stack computes the bias from row positions ([1, H, q, k]) and hands
        # it to the next layers; the mask is applied in every layer, never folded into what is
        # handed on. Within a document, key minus query is the same wherever the document sits.
        bias = position_bias
        if bias is None and module.has_relative_attention_bias:
            bias = module.compute_bias(query.shape[-2], keys.shape[-2], device=query.device)
    dropout = module.dropout if module.training else 0.0
    attended = _attend(module, layout, kind, query, keys, values, 1.0, dropout, bias)
    batch, length = hidden_states.shape[:2]
    output = module.o(attended.transpose(1, 2).reshape(batch, length, module.inner_dim))
    return output, bias, None


def _attention_mixin(name: str, packed_forward) -> type:
    """A mixin put before an attention module's own class: `packed_forward(module, layout, ...)`
    when the call carries a layout, the module's own forward otherwise."""

    def forward(self, *args, **kwargs):
        layout = kwargs.pop(LAYOUT_KWARG, None)
        if layout is None:
            return super(mixin, self).forward(*args, **kwargs)
        if "past_key_values" in kwargs:
            kwargs["cache"] = kwargs.pop("past_key_values")
        return packed_forward(self, layout, *args, **kwargs)

    mixin = type(name, (), {"forward": forward, "__module__": __name__})
    return mixin


_PackedBartAttention = _attention_mixin("_PackedBartAttention", _bart_forward)
_PackedT5Attention = _attention_mixin("_PackedT5Attention", _t5_forward)


class _PackedPositions:
    """BART's learned positions, restarting at every document during a packed call."""

    def forward(self, input_ids: Tensor, cache_length: int = 0, position_ids: Tensor | None = None):
        layout = getattr(self, _STATE_ATTR).current
        if layout is None:
            return super().forward(input_ids, cache_length, position_ids=position_ids)
        positions = layout.positions(getattr(self, _ROLE_ATTR))
        if tuple(input_ids.shape[:2]) != tuple(positions.shape):
            raise ValueError(f"packed position ids {tuple(positions.shape)} do not match the "
                             f"{tuple(input_ids.shape[:2])} tokens embedded")
        return nn.Embedding.forward(self, positions.to(self.weight.device) + self.offset)


_MIXINS = (_PackedBartAttention, _PackedT5Attention, _PackedPositions)
_SUBCLASSES: dict[tuple[type, type], type] = {}


def _swap(module: nn.Module, mixin: type, state: _State, role: str | None = None) -> None:
    base = type(module)
    if not isinstance(module, mixin):
        key = (mixin, base)
        if key not in _SUBCLASSES:
            _SUBCLASSES[key] = type(f"Packed{base.__name__}", (mixin, base), {})
        module.__class__ = _SUBCLASSES[key]
    setattr(module, _STATE_ATTR, state)
    if role is not None:
        setattr(module, _ROLE_ATTR, role)
    state.swapped.append(module)


# ----------------------------------------------------------------------------------------------
# Hooks: the packed call's ids in, the layout down to the stacks


def _model_pre_hook(model: nn.Module, args: tuple, kwargs: dict):
    state: _State = getattr(model, _STATE_ATTR)
    present = [key for key in PACKED_BATCH_KEYS if key in kwargs]
    if not present:
        state.current = None
        return None
    if len(present) != len(PACKED_BATCH_KEYS):
        raise ValueError(f"a packed batch needs all of {list(PACKED_BATCH_KEYS)}, got {present}")
    for module in state.swapped:
        if not isinstance(module, _MIXINS):
            # Something swapped a module back (another kernel installed afterwards): training on
            # would mix documents silently.
            raise RuntimeError(f"{type(module).__name__} is no longer the packed attention; "
                               "install the packed attention after any other kernel")
    state.current = PackedLayout(*(kwargs.pop(key) for key in PACKED_BATCH_KEYS))
    kwargs.pop("attention_mask", None)   # the document ids say what is padding
    return args, kwargs


def _model_post_hook(model: nn.Module, args: tuple, kwargs: dict, output):
    getattr(model, _STATE_ATTR).current = None
    return None


def _stack_pre_hook(stack: nn.Module, args: tuple, kwargs: dict):
    layout = getattr(stack, _STATE_ATTR).current
    if layout is None:
        return None
    role = getattr(stack, _ROLE_ATTR)
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    expected = (layout.rows, layout.length(role))
    if tokens is not None and (tokens.shape[0], tokens.shape[1]) != expected:
        raise ValueError(f"the {role} of a packed batch is laid out as {expected}, but the stack got "
                         f"{tuple(tokens.shape[:2])}")
    kwargs[LAYOUT_KWARG] = layout
    if role == "target":
        kwargs["use_cache"] = False
    return args, kwargs


# ----------------------------------------------------------------------------------------------
# Installing


def _family(model: nn.Module):
    """The model's family adapter (models/family.py), if its attention can be packed."""
    from ..models.family import family_of_model

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        family = family_of_model(model)
    except UnknownNameError:
        family = None
    if family is not None and family.packed_attention:
        return family
    raise ConfigError("train.batching", (
        f"packed batches need document-masked attention, which exists for the BART and T5 "
        f"families; this model is {type(model).__name__} ({model_type}); use train.batching "
        "fixed, token_budget or bucketed"))


def install_packed_attention(model: nn.Module, impl: str = "auto") -> nn.Module:
    """Make `model` keep the documents of packed batches apart (see the module doc); returns it.

    Install after any other attention kernel (model.attention). Calling it again changes `impl`.
    """
    if impl not in IMPLS:
        raise UnknownNameError("packed attention implementation", impl, IMPLS)
    family = _family(model)
    state = getattr(model, _STATE_ATTR, None)
    if isinstance(state, _State):
        state.impl = impl
        return model
    state = _State(impl)
    encoder, decoder = model.get_encoder(), model.get_decoder()
    if not family.relative_positions:  # BART: learned positions, restarted per document
        from transformers.models.bart.modeling_bart import (BartAttention,
                                                            BartLearnedPositionalEmbedding)
        attention, mixin = BartAttention, _PackedBartAttention
        for stack, role in ((encoder, "source"), (decoder, "target")):
            if not isinstance(stack.embed_positions, BartLearnedPositionalEmbedding):
                raise ConfigError("train.batching", f"packed batches: {type(stack).__name__} has "
                                  "no learned position embedding to restart per document")
            _swap(stack.embed_positions, _PackedPositions, state, role)
    else:
        from transformers.models.t5.modeling_t5 import T5Attention
        attention, mixin = T5Attention, _PackedT5Attention
    modules = [m for m in model.modules() if isinstance(m, attention)]
    if not modules:
        raise ConfigError("train.batching", f"packed batches: {type(model).__name__} has no "
                          f"{attention.__name__} to mask")
    for module in modules:
        _swap(module, mixin, state)
    setattr(model, _STATE_ATTR, state)
    for stack, role in ((encoder, "source"), (decoder, "target")):
        setattr(stack, _STATE_ATTR, state)
        setattr(stack, _ROLE_ATTR, role)
        state.handles.append(stack.register_forward_pre_hook(_stack_pre_hook, with_kwargs=True))
    state.handles.append(model.register_forward_pre_hook(_model_pre_hook, with_kwargs=True))
    state.handles.append(model.register_forward_hook(_model_post_hook, with_kwargs=True,
                                                     always_call=True))
    return model


def is_installed(model: nn.Module) -> bool:
    return isinstance(getattr(model, _STATE_ATTR, None), _State)


def uninstall_packed_attention(model: nn.Module) -> nn.Module:
    """Back to the modules' previous classes and no hooks."""
    state = getattr(model, _STATE_ATTR, None)
    if not isinstance(state, _State):
        return model
    for handle in state.handles:
        handle.remove()
    for module in state.swapped:
        cls = type(module)
        if issubclass(cls, _MIXINS):
            module.__class__ = cls.__mro__[2]
        for attr in (_STATE_ATTR, _ROLE_ATTR):
            if attr in vars(module):
                delattr(module, attr)
    for stack in (model.get_encoder(), model.get_decoder()):
        for attr in (_STATE_ATTR, _ROLE_ATTR):
            if attr in vars(stack):
                delattr(stack, attr)
    delattr(model, _STATE_ATTR)
    return model
