"""BART attention that keeps SDPA's flash kernel on padded batches (`model.attention sdpa`).

transformers' SDPA path hands `scaled_dot_product_attention` a boolean mask wherever a batch has
padding, and torch's flash kernel takes no mask: padded BART batches run the memory-efficient
kernel instead (57 ms of a 0.11 s BART-base token-budget step on an H200, BENCHMARKS.md), while
cuDNN's kernel, which takes masks, costs host time on every call. To decide whether a mask can be
dropped, transformers also reads every padding mask back (`mask.all()`: the host waits for the
device, up to three times per forward).

Here the padding of the keys rides in the keys themselves. Encoder self-attention and
cross-attention mask keys only (the same padding for every query), so one extra feature does it:
queries get a 1 there, real keys a 0 and padding keys -BIG, and q.k picks up -BIG exactly for the
padding keys. Their softmax weight underflows to 0; real keys' scores gain 0 exactly. The head
dimension is padded to the next multiple of 8 (64 -> 72) as the flash kernel needs, values with
zeros that are sliced off the output. Attention dropout works as before: the flash kernel has it.
12.5% more attention FLOPs buys the flash kernel (and its dropout) for every padded batch.

The masks come from `read_free_masks` (registered under our implementation name,
`KEY_PADDING_SDPA`): bidirectional ones (encoder self-attention, cross-attention) as the keys'
padding, [B, 1, 1, keys], built without transformers' `mask.all()` reads; causal ones (decoder
self-attention) as transformers' explicit mask, so the decoder runs the memory-efficient kernel:
at summary lengths (targets of 64-128 tokens) a small part of the step. The attention function
applies the extra feature to a [B, 1, 1, keys] mask in a non-causal module and hands everything
else (no mask, a causal module, a mask of another shape: a user's 4D mask, one query: a
generation step) to transformers' own SDPA function unchanged. A batch without padding needs no mask at all: TrainStep takes it out on
the host (`read_free_masks.drop_full_mask`; plain flash then).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..errors import ConfigError, UnknownNameError
from .read_free_masks import register

IMPLS = ("hf", "sdpa")
KEY_PADDING_SDPA = "seq2seq_es_key_padding_sdpa"
_STATE_ATTR = "_seq2seq_es_bart_attention"
# The padding keys' extra feature: -BIG * scale (1/8 for 64-dim heads) is far below any real score,
# exp() of it 0 in every dtype, and -BIG itself exact in bf16 and fp16.
BIG = 16384.0
HEAD_DIM_MULTIPLE = 8   # the flash kernel's head dimensions


def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
              attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs) -> tuple[Tensor, None]:
    """[B, q, H, d] attention output (transformers' attention-function contract)."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    # One query (a generation step's cross-attention over the cached keys): flash gains nothing
    # there, and widening the cached keys and values would copy them at every step (for beam
    # search over 1024-token sources, hundreds of MB per layer and token); transformers' SDPA
    # takes the [B, 1, 1, keys] boolean mask as it is.
    if attention_mask is None or causal or attention_mask.dim() != 4 or query.shape[2] == 1 \
            or attention_mask.shape[-2] != 1 or attention_mask.dtype != torch.bool:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    return padded_key_attention(query, key, value, attention_mask, dropout, scaling), None


def padded_key_attention(query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor,
                         dropout: float, scaling: float | None) -> Tensor:
    """softmax(q.k * scale + padding) v with the padding as an extra q/k feature (module doc);
    query [B, H, q, d], key/value [B, H, k, d], key_mask [B, 1, 1, k] (True: a real key)."""
    batch, heads, queries, head_dim = query.shape
    keys = key.shape[2]
    extra = HEAD_DIM_MULTIPLE - head_dim % HEAD_DIM_MULTIPLE   # 64 -> 8 more, at least one
    ones = query.new_ones(batch, heads, queries, 1)
    query = torch.cat([query, ones, query.new_zeros(batch, heads, queries, extra - 1)], dim=-1)
    padding = torch.where(key_mask, 0.0, -BIG).to(key.dtype)            # [B, 1, 1, k]
    padding = padding.transpose(-1, -2).expand(batch, heads, keys, 1)  # [B, H, k, 1]
    key = torch.cat([key, padding, key.new_zeros(batch, heads, keys, extra - 1)], dim=-1)
    value = F.pad(value, (0, extra))
    out = F.scaled_dot_product_attention(
        query, key, value, dropout_p=dropout,
        scale=scaling if scaling is not None else head_dim ** -0.5)
    return out[..., :head_dim].transpose(1, 2).contiguous()


def apply_bart_attention(model: nn.Module, impl: str, *,
                         config_key: str = "model.attention") -> nn.Module:
    """Run a BART model's attention on `impl`: "sdpa" (this module) or "hf" (transformers' own,
    the implementation the model had before); returns the same model, parameters untouched."""
    if impl not in IMPLS:
        raise UnknownNameError(f"BART attention implementation ({config_key})", impl, IMPLS)
    if not hasattr(model, "set_attn_implementation"):
        raise ConfigError(config_key, f"'{impl}' needs a transformers BART model, not "
                                      f"{type(model).__name__}")
    state = getattr(model, _STATE_ATTR, None)
    if impl == "hf":
        if state is not None:
            model.set_attn_implementation(state)
            delattr(model, _STATE_ATTR)
        return model
    if state is None:
        setattr(model, _STATE_ATTR, model.config._attn_implementation)
    register(KEY_PADDING_SDPA, attention)
    model.set_attn_implementation(KEY_PADDING_SDPA)
    return model
