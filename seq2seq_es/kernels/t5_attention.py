"""T5 attention with its relative-position bias on fused kernels (SDPA or FlexAttention).

transformers' T5 materialises the relative-position bias as a dense [1, heads, q, k] tensor in the first
layer of each stack, adds the padding/causal mask to it and runs the attention on that. This module swaps
the forward of every `T5Attention` for one of ours while keeping its parameters (q, k, v, o and
relative_attention_bias stay the same Parameter objects, so state_dict keys and checkpoints do not change):

- "hf": transformers' own forward (whatever attention implementation the model was loaded with).
- "sdpa": the bias and the mask are folded ONCE per stack into one additive float mask that every layer
  hands to `scaled_dot_product_attention(scale=1.0)` (T5 does not scale q.k). Cross-attention has no
  bias, so it gets the boolean padding mask as is. Supports dropout, the KV cache and generation.
- "flex": `flex_attention` with a `score_mod` that adds the bias from a per-stack table (layout "dense":
  [heads, q, k]; layout "distance": [heads, q + k - 1] indexed by key minus query) and a BlockMask for
  padding and causality, built once per stack by transformers' mask machinery through a mask hook we
  register under our own attention-implementation name. Generation steps (one query) and prepared 4D
  tensor masks go to the SDPA path instead. The bias gradient flows through the score_mod as
  a captured-buffer gradient (torch >= 2.6 supports it; torch 2.13's fused backward scatters it with
  atomic adds). On CUDA the kernel is `torch.compile(flex_attention)`; on the CPU it is the uncompiled
  reference path (same semantics, scores materialised, forward only: torch has no flex backward on CPU).
  FlexAttention has no attention-probability dropout, so training with dropout_rate > 0 is refused.

Rows whose keys are all masked: "sdpa" matches transformers' eager T5 (a uniform softmax over the masked
keys); "flex" returns zeros there. Padding is on the key side in normal use, so no real row is affected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask, flex_attention
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface
from transformers.models.t5.modeling_t5 import T5Attention

from seq2seq_es.errors import ConfigError, UnknownNameError

from . import read_free_masks

IMPLS = ("hf", "sdpa", "flex")
FLEX_BIAS_LAYOUTS = ("dense", "distance")
# Name under which the flex mask hook is registered with transformers; the model config carries it so
# that each T5 stack builds one BlockMask per forward and hands it to all its layers.
FLEX_MASK_IMPLEMENTATION = "seq2seq_es_t5_flex"
# "sdpa": transformers' SDPA masks (boolean, or None), built without device reads; any module
# that still calls transformers' attention function gets transformers' SDPA.
SDPA_MASK_IMPLEMENTATION = "seq2seq_es_t5_sdpa"
_STATE_ATTR = "_seq2seq_es_t5_attention"


# ----------------------------------------------------------------------------------------------------
# Relative-position bias


def relative_position_buckets(key_minus_query: Tensor, *, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> Tensor:
    """T5's bucket id for each key-minus-query offset (Raffel et al. 2020, section 2.1).

    Half of the buckets of a direction hold exact distances, the other half log-spaced distances up
    to `max_distance`; a bidirectional bias splits the buckets between keys before and after the query,
    a causal one only sees keys at or before it.
    """
    offsets = key_minus_query.long()
    if bidirectional:
        num_buckets //= 2
        direction = (offsets > 0).long() * num_buckets
        distance = offsets.abs()
    else:
        direction = torch.zeros_like(offsets)
        distance = (-offsets).clamp(min=0)
    exact = num_buckets // 2
    # clamp(min=1) only keeps log() finite; those entries take the exact branch below anyway.
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    log_bucket = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return direction + torch.where(distance < exact, distance, log_bucket)


def _query_positions(query_len: int, past: int | Tensor, device: torch.device) -> Tensor:
    return torch.arange(query_len, device=device) + past


def _bias_from_offsets(module: T5Attention, key_minus_query: Tensor) -> Tensor:
    buckets = relative_position_buckets(
        key_minus_query, bidirectional=not module.is_decoder,
        num_buckets=module.relative_attention_num_buckets,
        max_distance=module.relative_attention_max_distance)
    return module.relative_attention_bias(buckets)  # [..., heads]


def dense_position_bias(module: T5Attention, query_len: int, key_len: int, past: int | Tensor) -> Tensor:
    """The bias as [heads, query_len, key_len] for queries that start at absolute position `past`."""
    device = module.relative_attention_bias.weight.device
    offsets = torch.arange(key_len, device=device)[None, :] - _query_positions(query_len, past, device)[:, None]
    return _bias_from_offsets(module, offsets).permute(2, 0, 1).contiguous()


def distance_position_bias(module: T5Attention, query_len: int, key_len: int, past: int | Tensor) -> Tensor:
    """The bias as [heads, query_len + key_len - 1]; entry i holds key index minus query index = i - (query_len - 1)."""
    device = module.relative_attention_bias.weight.device
    index_offsets = torch.arange(-(query_len - 1), key_len, device=device)
    return _bias_from_offsets(module, index_offsets - past).t().contiguous()


# ----------------------------------------------------------------------------------------------------
# Projections and the KV cache


def _split_heads(module: T5Attention, states: Tensor) -> Tensor:
    batch, length, _ = states.shape
    return states.view(batch, length, module.n_heads, module.key_value_proj_dim).transpose(1, 2)


def _past_length(module: T5Attention, cache: Cache | None) -> int | Tensor:
    """Tokens already in the self-attention cache (a tensor for static caches)."""
    if cache is None:
        return 0
    return cache.get_seq_length(module.layer_idx)


def _keys_and_values(module: T5Attention, hidden_states: Tensor, key_value_states: Tensor | None,
                     cache: Cache | None) -> tuple[Tensor, Tensor]:
    """Project keys/values, appending them to (or, for cross-attention, reading them from) the cache."""
    is_cross = key_value_states is not None
    source = key_value_states if is_cross else hidden_states
    if cache is None:
        return _split_heads(module, module.k(source)), _split_heads(module, module.v(source))
    layer_cache = cache
    if isinstance(cache, EncoderDecoderCache):
        layer_cache = cache.cross_attention_cache if is_cross else cache.self_attention_cache
        # The encoder output does not change during generation: its keys/values are projected once.
        if is_cross and cache.is_updated.get(module.layer_idx):
            stored = layer_cache.layers[module.layer_idx]
            return stored.keys, stored.values
    keys, values = layer_cache.update(
        _split_heads(module, module.k(source)), _split_heads(module, module.v(source)), module.layer_idx)
    if is_cross and isinstance(cache, EncoderDecoderCache):
        cache.is_updated[module.layer_idx] = True
    return keys, values


def _merge_heads(module: T5Attention, attended: Tensor) -> Tensor:
    batch, _, length, _ = attended.shape
    return module.o(attended.transpose(1, 2).reshape(batch, length, module.inner_dim))


def _refuse_attention_weights(module: T5Attention, kwargs: dict[str, Any]) -> None:
    if kwargs.get("output_attentions") or getattr(module.config, "output_attentions", False):
        raise ConfigError("output_attentions", "the sdpa and flex T5 attention kernels never form the attention "
                          "weights; use apply_t5_attention(model, 'hf') with attn_implementation='eager' for them")


# ----------------------------------------------------------------------------------------------------
# SDPA


def _sdpa_additive_mask(module: T5Attention, query: Tensor, key_len: int, mask: Tensor | None,
                        past: int | Tensor) -> Tensor | None:
    """Self-attention: position bias and padding/causal mask as one additive mask in the query dtype."""
    query_len, dtype, device = query.shape[-2], query.dtype, query.device
    bias = None
    if module.has_relative_attention_bias:
        bias = dense_position_bias(module, query_len, key_len, past).unsqueeze(0).to(dtype)
    if mask is None and module.is_decoder:
        # transformers leaves the causal mask to SDPA's is_causal when nothing is padded.
        key_pos = torch.arange(key_len, device=device)
        mask = (key_pos[None, :] <= _query_positions(query_len, past, device)[:, None])[None, None]
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        # finfo.min rather than -inf: a fully masked row then softmaxes uniformly, as in eager T5, not to NaN.
        base = bias if bias is not None else torch.zeros((), dtype=dtype, device=device)
        return torch.where(mask, base, torch.finfo(dtype).min)
    return mask.to(dtype) if bias is None else bias + mask.to(dtype)


def _sdpa_attention(module: T5Attention, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None,
                    position_bias: Tensor | None, past: int | Tensor,
                    is_cross: bool) -> tuple[Tensor, Tensor | None]:
    if is_cross:
        # T5 cross-attention has no position bias: SDPA takes the boolean padding mask directly.
        attn_mask = mask if mask is None or mask.dtype == torch.bool else mask.to(query.dtype)
        carried = None
    else:
        # The first layer of the stack builds the mask; the stack hands it to the next layers.
        if position_bias is None:
            position_bias = _sdpa_additive_mask(module, query, keys.shape[-2], mask, past)
        attn_mask = carried = position_bias
    dropout = module.dropout if module.training else 0.0
    attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=attn_mask, dropout_p=dropout,
                                              scale=1.0)
    return attended, carried


# ----------------------------------------------------------------------------------------------------
# FlexAttention

# Static shapes: each new (batch, heads, q, k) recompiles, up to torch._dynamo.config.recompile_limit, after
# which torch runs the unfused path; feed flex length-bucketed batches. Automatic dynamic shapes are off
# because torch 2.13's CPU codegen failed to compile the dynamic flex kernel here (`cur_kvSplitSize8` not
# declared); the static kernels compiled and matched transformers for both bias layouts.
FLEX_COMPILE_OPTIONS: dict[str, Any] = {"dynamic": False}
_compiled_flex: Callable | None = None


def _flex_kernel(device: torch.device) -> Callable:
    """Compiled flex_attention on accelerators; the uncompiled reference on the CPU (see module doc)."""
    global _compiled_flex
    if device.type == "cpu":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, **FLEX_COMPILE_OPTIONS)
    return _compiled_flex


def _dense_bias_mod(table: Tensor) -> Callable:
    def add_bias(score, batch, head, q_idx, kv_idx):
        return score + table[head, q_idx, kv_idx]
    return add_bias


def _distance_bias_mod(table: Tensor, query_len: int) -> Callable:
    def add_bias(score, batch, head, q_idx, kv_idx):
        return score + table[head, kv_idx - q_idx + (query_len - 1)]
    return add_bias


def flex_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int | Tensor = 0,
              kv_offset: int | Tensor = 0, mask_function: Callable | None = None,
              attention_mask: Tensor | None = None, device: torch.device | str = "cpu",
              **_unused: Any) -> BlockMask | Tensor:
    """transformers mask hook: the stack's causal/bidirectional pattern plus key padding as a BlockMask.

    `mask_function` works on absolute positions (queries start at q_offset, keys at kv_offset);
    `attention_mask` is the 2D padding mask over every key the cache has seen. For a single query
    (a generation step) it returns the dense boolean [batch, 1, 1, keys] mask instead, which sends the
    step to SDPA: the static-shape flex kernel would otherwise recompile for every new key length.
    """
    padding = None
    if attention_mask is not None:
        padding = attention_mask.to(device=device, dtype=torch.bool)
        missing = int(kv_offset) + kv_length - padding.shape[-1]
        if missing > 0:
            padding = F.pad(padding, (0, missing), value=False)

    def allowed(batch, head, q_idx, kv_idx):
        q_abs, kv_abs = q_idx + q_offset, kv_idx + kv_offset
        keep = mask_function(batch, head, q_abs, kv_abs) if mask_function is not None else q_abs >= 0
        return keep & padding[batch, kv_abs] if padding is not None else keep

    if q_length == 1:
        return create_mask(allowed, batch_size, None, q_length, kv_length, device)
    return create_block_mask(allowed, B=batch_size, H=None, Q_LEN=q_length, KV_LEN=kv_length, device=device)


def _attention_called_directly(module: nn.Module, *args: Any, **kwargs: Any):
    raise RuntimeError(f"attention implementation '{FLEX_MASK_IMPLEMENTATION}' only builds masks for "
                       "seq2seq_es' T5 flex forward; call apply_t5_attention(model, 'flex') on a T5 model")


def _register_flex_masks() -> None:
    AttentionMaskInterface.register(FLEX_MASK_IMPLEMENTATION, flex_mask)
    AttentionInterface.register(FLEX_MASK_IMPLEMENTATION, _attention_called_directly)


def _flex_attention(module: T5Attention, query: Tensor, keys: Tensor, values: Tensor,
                    mask: BlockMask | None, position_bias: Tensor | None, past: int | Tensor,
                    is_cross: bool) -> tuple[Tensor, Tensor | None]:
    if module.training and module.dropout > 0:
        raise ConfigError("dropout_rate", f"FlexAttention has no attention dropout but the model has dropout_rate "
                          f"{module.dropout} in training; set it to 0 or use the 'sdpa' T5 attention")
    query_len, key_len = query.shape[-2], keys.shape[-2]
    layout = getattr(module, "_seq2seq_es_flex_layout", "dense")
    table = None
    if not is_cross:
        table = position_bias
        if table is None and module.has_relative_attention_bias:
            build = dense_position_bias if layout == "dense" else distance_position_bias
            table = build(module, query_len, key_len, past)
    score_mod = None
    if table is not None:
        score_mod = _dense_bias_mod(table) if layout == "dense" else _distance_bias_mod(table, query_len)
    attended = _flex_kernel(query.device)(query, keys, values, score_mod=score_mod, block_mask=mask, scale=1.0)
    return attended, table


# ----------------------------------------------------------------------------------------------------
# The swapped-in modules


def _forward(module: T5Attention, impl: str, hidden_states: Tensor, mask=None, key_value_states=None,
             position_bias=None, cache=None, **kwargs):
    _refuse_attention_weights(module, kwargs)
    is_cross = key_value_states is not None
    # Read before this layer's keys enter the cache: the absolute position of the first query.
    past = 0 if is_cross else _past_length(module, cache)
    query = _split_heads(module, module.q(hidden_states))
    keys, values = _keys_and_values(module, hidden_states, key_value_states, cache)
    # Our mask hook hands flex layers a BlockMask, or a boolean tensor for generation steps. A prepared 4D
    # tensor mask passes through transformers unchanged, and so does None for some caches: SDPA runs all
    # of those with the same semantics.
    causal_without_mask = mask is None and module.is_decoder and not is_cross
    if impl == "flex" and isinstance(mask, BlockMask | None) and not causal_without_mask:
        attended, carried = _flex_attention(module, query, keys, values, mask, position_bias, past, is_cross)
    else:
        attended, carried = _sdpa_attention(module, query, keys, values, mask, position_bias, past, is_cross)
    # transformers' T5Block hands the second value to the next layer of the stack as its position_bias.
    return _merge_heads(module, attended), carried, None


class T5AttentionSdpa(T5Attention):
    """T5Attention whose forward runs SDPA with the bias folded into the additive mask."""

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        return _forward(self, "sdpa", hidden_states, mask, key_value_states, position_bias, cache, **kwargs)


class T5AttentionFlex(T5Attention):
    """T5Attention whose forward runs FlexAttention with the bias as a score_mod."""

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        return _forward(self, "flex", hidden_states, mask, key_value_states, position_bias, cache, **kwargs)


_CLASSES = {"hf": T5Attention, "sdpa": T5AttentionSdpa, "flex": T5AttentionFlex}


def _owning_pretrained_model(model: nn.Module) -> PreTrainedModel | None:
    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def apply_t5_attention(model: nn.Module, impl: str, *, flex_bias_layout: str = "dense",
                       config_key: str = "t5_attention") -> nn.Module:
    """Run every T5Attention in `model` on `impl` ("hf", "sdpa" or "flex"); returns the same model.

    Parameters and state_dict keys are untouched. Calling it again with another impl switches over;
    "hf" restores transformers' forward and the attention implementation the model had before.
    `flex_bias_layout` picks how the bias table is laid out for the flex score_mod ("dense" or
    "distance"; see the module docstring). `config_key` names the setting in error messages.
    """
    if impl not in IMPLS:
        raise UnknownNameError("T5 attention implementation", impl, IMPLS)
    if flex_bias_layout not in FLEX_BIAS_LAYOUTS:
        raise UnknownNameError("flex bias layout", flex_bias_layout, FLEX_BIAS_LAYOUTS)
    attentions = [m for m in model.modules() if isinstance(m, T5Attention)]
    if not attentions:
        raise ConfigError(config_key, f"'{impl}' needs a T5 model, but {type(model).__name__} has no T5Attention")
    owner = _owning_pretrained_model(model)
    if owner is None:
        raise ConfigError(config_key, f"{type(model).__name__} holds T5 attention outside a transformers model")

    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        state = {"original_attn_implementation": owner.config._attn_implementation}
    for module in attentions:
        module.__class__ = _CLASSES[impl]
        module._seq2seq_es_flex_layout = flex_bias_layout

    if impl == "hf":
        owner.set_attn_implementation(state["original_attn_implementation"])
        if hasattr(model, _STATE_ATTR):
            delattr(model, _STATE_ATTR)
        return model
    if impl == "flex":
        _register_flex_masks()
    # "sdpa" wants boolean masks (or None) from the stacks, built without reading them back
    # (kernels/read_free_masks.py), "flex" one BlockMask per stack.
    if impl == "sdpa":
        read_free_masks.register(SDPA_MASK_IMPLEMENTATION, sdpa_attention_forward)
    owner.set_attn_implementation(SDPA_MASK_IMPLEMENTATION if impl == "sdpa"
                                  else FLEX_MASK_IMPLEMENTATION)
    setattr(model, _STATE_ATTR, {**state, "impl": impl})
    return model
