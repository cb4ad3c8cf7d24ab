"""Fast attention for transformers' LED (LEDO): local+global encoder attention and SDPA decoder attention.

`apply_led_attention(model, impl)` switches an `LEDForConditionalGeneration` (or `LEDModel`) between:

- ``"hf"``: transformers' own attention (sliding chunks in the encoder, eager bmm+softmax in the decoder);
- ``"sdpa"``: a dense masked reference. The encoder builds the full [L, L] boolean mask of what LED attends
  to and calls `scaled_dot_product_attention`; runs anywhere (CPU too), meant for short inputs and checking;
- ``"flex"``: FlexAttention with a block-sparse mask (window band + global keys) for the rows of non-global
  tokens, and a small dense pass for the rows of global tokens with LED's separate global projections.
  No [L, L] tensor is ever built. Forward on CPU and GPU, backward on GPU only (a torch limitation).
  (On the CPU, torch 2.13's compiled FlexAttention gave wrong rows now and then for sequences shorter than
  64 tokens with several threads; LED pads inputs to its window, so real models do not meet this.)

Both "sdpa" and "flex" also move the decoder's self- and cross-attention onto SDPA.

What LED's encoder self-attention computes (transformers' `LEDEncoderSelfAttention`), and what we reproduce:

- the encoder pads the input to a multiple of max(attention_window) before the layers (we keep that: we
  replace only the attention forward, so `LEDEncoder._pad_to_window_size` still runs);
- a row i of a non-global, non-padding token attends, with the `query/key/value` projections and scale
  1/sqrt(head_dim), to the keys j with |i - j| <= attention_window/2 (per layer) that are not padding, plus
  to every global token (counted once even when it lies inside the window);
- a row of a global token instead attends to every non-padding key with the `query_global/key_global/
  value_global` projections;
- rows of padding tokens get a zero attention output;
- attention-probability dropout with `config.attention_dropout` (FlexAttention has no dropout: "flex"
  refuses to train with attention_dropout > 0 rather than silently skip it).

The swap changes the class of the existing attention modules to a subclass with another forward, so the
Linear layers stay the same Parameter objects and state_dict keys do not change.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.led.modeling_led import (
    LEDDecoder,
    LEDDecoderAttention,
    LEDEncoderSelfAttention,
)

from ..errors import ConfigError, UnknownNameError

ATTENTION_IMPLS = ("hf", "sdpa", "flex")

# Block size of the FlexAttention block mask: a multiple of the kernels' tile sizes on current GPUs.
FLEX_BLOCK_SIZE = 128

# How many (batch padding pattern, global pattern) layouts to keep: each holds a few [B, L] tensors and
# one small block table per window size, so a training run on bucketed lengths reuses them across steps.
_LAYOUT_CACHE_SIZE = 16


# ----------------------------------------------------------------------------------------------------------
# Encoder layout: which tokens are padding, which are global, where the global tokens sit
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSpans:
    """The common shape of an LED batch, known on the host: row b's global tokens are its first
    global_counts[b] positions and its padding starts at lengths[b] (right padding). With it the
    flex mask is index arithmetic, not a lookup into [B, L] tensors on every masked tile."""

    global_counts: tuple[int, ...]
    lengths: tuple[int, ...]


def find_row_spans(key_padding: torch.Tensor, is_global: torch.Tensor) -> RowSpans | None:
    """RowSpans of host [B, L] bool tensors, or None when some row has a global token after a
    non-global one or a token after its padding (the mask then reads the layout's tensors)."""
    key_padding = key_padding.bool()
    is_global = is_global.bool() & ~key_padding
    lengths = (~key_padding).sum(dim=1)
    global_counts = is_global.sum(dim=1)
    positions = torch.arange(key_padding.shape[1])[None, :]
    if not (torch.equal(key_padding, positions >= lengths[:, None])
            and torch.equal(is_global, positions < global_counts[:, None])):
        return None
    return RowSpans(tuple(global_counts.tolist()), tuple(lengths.tolist()))


@dataclass
class EncoderLayout:
    """The padding/global pattern of one encoder batch, shared by every layer of one forward pass."""

    key_padding: torch.Tensor  # [B, L] bool: padding token (LED's `is_index_masked`)
    is_global: torch.Tensor  # [B, L] bool: global token (never padding)
    num_slots: int  # G: most global tokens in any row of the batch (0: no global attention)
    slot_positions: torch.Tensor  # [B, G] long: position of the g-th global token of each row
    slot_valid: torch.Tensor  # [B, G] bool: the row has a g-th global token
    any_padding: bool  # known on the host: without padding the masks that only remove padding can go
    block_masks: dict = field(default_factory=dict)  # one-sided window -> flex BlockMask
    row_spans: RowSpans | None = None  # prefix globals and right padding, when the batch is so shaped

    @property
    def band_key_ok(self) -> torch.Tensor:
        """Keys a non-global row may reach through the window band: not padding, not global (globals
        come in once through their own slots, as in LED)."""
        return ~(self.key_padding | self.is_global)


def build_encoder_layout(is_index_masked: torch.Tensor, is_index_global_attn: torch.Tensor,
                         num_slots: int, any_padding: bool | None = None,
                         row_spans: RowSpans | None = None) -> EncoderLayout:
    """Gather the global-token bookkeeping for one batch; `num_slots` = max global tokens per row,
    `any_padding` whether any token is padding (computed here, with a host sync, when not given),
    `row_spans` the batch's shape when it has prefix globals and right padding (find_row_spans)."""
    key_padding = is_index_masked.bool()
    is_global = is_index_global_attn.bool() & ~key_padding
    batch_size = key_padding.shape[0]
    device = key_padding.device
    if any_padding is None:
        any_padding = bool(key_padding.any())
    if num_slots == 0:
        empty_long = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        return EncoderLayout(key_padding, is_global, 0, empty_long, empty_long.bool(), any_padding,
                             row_spans=row_spans)
    # A stable sort that puts the global positions first keeps them in sequence order.
    order = torch.argsort((~is_global).to(torch.int32), dim=1, stable=True)
    slot_positions = order[:, :num_slots]
    counts = is_global.sum(dim=1)
    slot_valid = torch.arange(num_slots, device=device)[None, :] < counts[:, None]
    return EncoderLayout(key_padding, is_global, num_slots, slot_positions, slot_valid, any_padding,
                         row_spans=row_spans)


class _LayoutCache:
    """Layouts keyed twice: by tensor identity (the same mask tensors reach all layers of one forward,
    and the recomputation under non-reentrant checkpointing, at no host sync), and by content (one
    small device-to-host copy per forward, so later steps with the same pattern reuse the block masks)."""

    def __init__(self, size: int):
        self.size = size
        self.by_content: OrderedDict = OrderedDict()
        self.last_identity: tuple | None = None  # (masked tensor, its version, global tensor, version, layout)

    def get(self, is_index_masked: torch.Tensor, is_index_global_attn: torch.Tensor,
            has_global: bool) -> EncoderLayout:
        last = self.last_identity
        if (last is not None and last[0] is is_index_masked and last[1] == is_index_masked._version
                and last[2] is is_index_global_attn and last[3] == is_index_global_attn._version):
            return last[4]
        pattern = torch.stack([is_index_masked.bool(), is_index_global_attn.bool() & has_global])
        pattern_host = pattern.cpu()
        key = (str(is_index_masked.device), tuple(is_index_masked.shape), pattern_host.numpy().tobytes())
        layout = self.by_content.get(key)
        if layout is None:
            num_slots = int(pattern_host[1].sum(dim=1).max()) if has_global else 0
            layout = build_encoder_layout(is_index_masked, is_index_global_attn & has_global, num_slots,
                                          any_padding=bool(pattern_host[0].any()),
                                          row_spans=find_row_spans(pattern_host[0], pattern_host[1]))
            self.by_content[key] = layout
            while len(self.by_content) > self.size:
                self.by_content.popitem(last=False)
        else:
            self.by_content.move_to_end(key)
        self.last_identity = (is_index_masked, is_index_masked._version, is_index_global_attn,
                              is_index_global_attn._version, layout)
        return layout

    def clear(self) -> None:
        self.by_content.clear()
        self.last_identity = None


_layout_cache = _LayoutCache(_LAYOUT_CACHE_SIZE)


def clear_led_attention_caches() -> None:
    """Drop cached layouts and block masks (they hold small device tensors)."""
    _layout_cache.clear()


# ----------------------------------------------------------------------------------------------------------
# FlexAttention block mask: [global slots | window band] keys for every query row
# ----------------------------------------------------------------------------------------------------------


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def padded_slot_count(num_slots: int) -> int:
    """Global keys go in front of the sequence in whole blocks, so the band stays block-aligned."""
    return _round_up(num_slots, FLEX_BLOCK_SIZE) if num_slots else 0


def make_flex_mask_mod(layout: EncoderLayout, one_sided_window: int):
    """The element-wise mask over keys laid out as [global slots (padded to blocks) | sequence].

    The mask_mods close over tensors only, never over a Python int: torch.compile marks a closure
    int whose value changes between calls dynamic (another layer's window, another slot count, or
    the same cell of another mask_mod) and recompiles, and torch 2.13's CPU flex template then
    failed to build the kernel. A scalar tensor costs one load per tile."""
    device = layout.key_padding.device
    window = torch.tensor(one_sided_window, device=device)
    if layout.row_spans is not None:
        return _span_mask_mod(layout, window)
    n_slot_keys = padded_slot_count(layout.num_slots)
    seq_len = layout.key_padding.shape[1]
    padded_len = _round_up(seq_len, FLEX_BLOCK_SIZE)
    # Lookups padded to whole blocks: the kernels evaluate the mask on full tiles past the sequence end.
    band_key_ok = F.pad(layout.band_key_ok, (0, padded_len - seq_len), value=False)
    slot_ok = F.pad(layout.slot_valid, (0, n_slot_keys - layout.num_slots), value=False)

    if n_slot_keys == 0:
        def band_mask_mod(b, h, q_idx, kv_idx):
            return ((q_idx - kv_idx).abs() <= window) & band_key_ok[b, kv_idx]
        return band_mask_mod

    first_position = torch.tensor(n_slot_keys, device=device)  # of the sequence among the keys
    zero, last_slot = torch.tensor(0, device=device), torch.tensor(n_slot_keys - 1, device=device)

    def slots_and_band_mask_mod(b, h, q_idx, kv_idx):
        band_pos = kv_idx - first_position
        in_band = ((q_idx - band_pos).abs() <= window) & band_key_ok[b, torch.maximum(band_pos, zero)]
        in_slots = slot_ok[b, torch.minimum(kv_idx, last_slot)]
        return torch.where(kv_idx < first_position, in_slots, in_band)

    return slots_and_band_mask_mod


def _span_mask_mod(layout: EncoderLayout, window: torch.Tensor):
    """make_flex_mask_mod for a batch with RowSpans: the same mask from positions and a few scalars.
    The general mask gathers from [B, L] tensors at every element of each tile the block table
    leaves partial (each band edge and the slot block); here a tile reads two numbers of its row,
    and LED batches nearly always have this shape (global <s>, right padding)."""
    spans = layout.row_spans
    device = layout.key_padding.device
    global_counts = torch.tensor(spans.global_counts, device=device)  # band keys of row b start here
    lengths = torch.tensor(spans.lengths, device=device)  # and end here (padding after)
    n_slot_keys = torch.tensor(padded_slot_count(layout.num_slots), device=device)

    def row_spans_mask_mod(b, h, q_idx, kv_idx):
        first_key = global_counts[b]
        position = kv_idx - n_slot_keys
        in_band = ((q_idx - position).abs() <= window) & (position >= first_key) & (position < lengths[b])
        # A slot key (kv_idx < n_slot_keys: position < 0, never in the band) is global slot kv_idx,
        # which row b has when kv_idx < its number of globals.
        return (kv_idx < first_key) | in_band
    return row_spans_mask_mod


def _dense_blocks_to_ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 1, n_q, n_kv] bool block table -> (number of blocks per row, their column indices first)."""
    as_int = dense.to(torch.int32)
    counts = as_int.sum(dim=-1).to(torch.int32)
    indices = torch.argsort(as_int, dim=-1, descending=True, stable=True).to(torch.int32)
    return counts.contiguous(), indices.contiguous()


def build_flex_block_mask(layout: EncoderLayout, one_sided_window: int):
    """The BlockMask for the non-global rows, computed per 128x128 tile from block-level facts (band reach,
    padding, global slots) instead of evaluating the mask on every element, so it costs a few small kernels
    even at 16K. A tile is "full" (no per-element mask) only when every element in it is attended."""
    from torch.nn.attention.flex_attention import BlockMask

    block = FLEX_BLOCK_SIZE
    key_padding = layout.key_padding
    batch_size, seq_len = key_padding.shape
    device = key_padding.device
    n_blocks = -(-seq_len // block)
    padded_len = n_blocks * block
    window = one_sided_window

    starts = torch.arange(n_blocks, device=device) * block
    ends = torch.clamp(starts + block, max=seq_len) - 1
    q_start, q_end = starts[:, None], ends[:, None]
    k_start, k_end = starts[None, :], ends[None, :]
    band_touches = (k_start <= q_end + window) & (k_end >= q_start - window)  # [n_q, n_k]
    band_covers = (k_end <= q_start + window) & (k_start >= q_end - window)
    complete = (ends - starts + 1) == block  # [n]

    key_ok = F.pad(layout.band_key_ok, (0, padded_len - seq_len), value=False).view(batch_size, n_blocks, block)
    key_block_any = key_ok.any(dim=-1)  # [B, n_k]
    key_block_all = key_ok.all(dim=-1)
    # Query tiles made only of padding rows need no keys: those rows' outputs are zeroed anyway.
    live_rows = F.pad(~key_padding, (0, padded_len - seq_len), value=False).view(batch_size, n_blocks, block)
    q_live = live_rows.any(dim=-1)[:, :, None]  # [B, n_q, 1]

    band_any = band_touches[None] & key_block_any[:, None, :] & q_live
    band_full = band_covers[None] & key_block_all[:, None, :] & complete[None, :, None] & q_live
    partial, full = band_any & ~band_full, band_full

    n_slot_keys = padded_slot_count(layout.num_slots)
    if n_slot_keys:
        slot_ok = F.pad(layout.slot_valid, (0, n_slot_keys - layout.num_slots), value=False)
        slot_ok = slot_ok.view(batch_size, n_slot_keys // block, block)
        slot_any = slot_ok.any(dim=-1)[:, None, :] & q_live
        slot_full = slot_ok.all(dim=-1)[:, None, :] & q_live & complete[None, :, None]
        partial = torch.cat([slot_any & ~slot_full, partial], dim=-1)
        full = torch.cat([slot_full, full], dim=-1)

    kv_counts, kv_indices = _dense_blocks_to_ordered(partial[:, None])
    full_counts, full_indices = _dense_blocks_to_ordered(full[:, None])
    return BlockMask.from_kv_blocks(
        kv_counts, kv_indices, full_counts, full_indices, BLOCK_SIZE=block,
        mask_mod=make_flex_mask_mod(layout, window), seq_lengths=(seq_len, n_slot_keys + seq_len))


_compiled_flex_attention = None


def _flex_attention():
    """FlexAttention compiled once per process (uncompiled it would materialise the full score matrix)."""
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex_attention = torch.compile(flex_attention)
    return _compiled_flex_attention


# ----------------------------------------------------------------------------------------------------------
# Encoder self-attention
# ----------------------------------------------------------------------------------------------------------


def _split_heads(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, D] -> [B, H, L, D/H]."""
    batch_size, seq_len, _ = states.shape
    return states.view(batch_size, seq_len, num_heads, -1).transpose(1, 2)


def _merge_heads(states: torch.Tensor) -> torch.Tensor:
    """[B, H, L, d] -> [B, L, H*d]."""
    batch_size, num_heads, seq_len, head_dim = states.shape
    return states.transpose(1, 2).reshape(batch_size, seq_len, num_heads * head_dim)


def _gather_slots(states: torch.Tensor, layout: EncoderLayout, dim: int) -> torch.Tensor:
    """The entries of the global tokens along `dim` (the sequence dim), one per slot."""
    index_shape = [1] * states.dim()
    index_shape[0], index_shape[dim] = layout.slot_positions.shape
    index = layout.slot_positions.view(index_shape).expand(
        *[layout.num_slots if d == dim else s for d, s in enumerate(states.shape)])
    return states.gather(dim, index)


class _FastLEDEncoderSelfAttention(LEDEncoderSelfAttention):
    """Shared by the "sdpa" and "flex" encoder attention: the global rows and the output assembly."""

    def forward(self, hidden_states, attention_mask=None, is_index_masked=None, is_index_global_attn=None,
                is_global_attn=None, output_attentions=False):
        if output_attentions:
            # LED's attention-probability layout only exists in its own implementation.
            return super().forward(hidden_states, attention_mask, is_index_masked, is_index_global_attn,
                                   is_global_attn, output_attentions)
        dropout = self.dropout if self.training else 0.0
        self._check_dropout(dropout)
        layout = _layout_cache.get(is_index_masked, is_index_global_attn, bool(is_global_attn))
        query = _split_heads(self.query(hidden_states), self.num_heads)
        key = _split_heads(self.key(hidden_states), self.num_heads)
        value = _split_heads(self.value(hidden_states), self.num_heads)
        local_output = _merge_heads(self._local_attention(query, key, value, layout, dropout))
        if layout.num_slots:
            slot_output = self._global_rows(hidden_states, layout, dropout)  # [B, G, D]
            # Write the G global rows into place. (Gathering slot_output out to [B, L, D] instead
            # costs a backward scatter_add of all L rows onto G: about 4 ms a 16K step on an H100.)
            # Slots a row does not have point at non-global positions: they write back what is there.
            index = layout.slot_positions[..., None].expand(-1, -1, slot_output.shape[-1])
            slot_output = torch.where(layout.slot_valid[..., None], slot_output.to(local_output.dtype),
                                      local_output.gather(1, index))
            local_output = local_output.scatter(1, index, slot_output)
        if layout.any_padding:
            local_output = local_output.masked_fill(layout.key_padding[..., None], 0.0)
        return (local_output,)

    def _check_dropout(self, dropout: float) -> None:
        """Overridden where dropout cannot be honoured."""

    def _local_attention(self, query, key, value, layout: EncoderLayout, dropout: float) -> torch.Tensor:
        raise NotImplementedError

    def _global_rows(self, hidden_states: torch.Tensor, layout: EncoderLayout, dropout: float) -> torch.Tensor:
        """Rows of global tokens: their own query projection against every non-padding token's
        key_global/value_global projections (few rows, so a dense SDPA pass)."""
        slot_states = _gather_slots(hidden_states, layout, dim=1)
        query = _split_heads(self.query_global(slot_states), self.num_heads)
        key = _split_heads(self.key_global(hidden_states), self.num_heads)
        value = _split_heads(self.value_global(hidden_states), self.num_heads)
        # Without padding no mask is needed, which lets SDPA pick its fastest kernel.
        key_allowed = ~layout.key_padding[:, None, None, :] if layout.any_padding else None
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=key_allowed, dropout_p=dropout)
        return _merge_heads(output)


class SdpaLEDEncoderSelfAttention(_FastLEDEncoderSelfAttention):
    """LED encoder self-attention as one SDPA call under a dense [L, L] mask (reference; O(L^2) memory)."""

    def _local_attention(self, query, key, value, layout: EncoderLayout, dropout: float) -> torch.Tensor:
        seq_len = query.shape[2]
        positions = torch.arange(seq_len, device=query.device)
        band = (positions[:, None] - positions[None, :]).abs() <= self.one_sided_attn_window_size
        allowed = (band[None] & layout.band_key_ok[:, None, :]) | layout.is_global[:, None, :]
        # Padding rows keep their own key so that no row is empty; their output is zeroed afterwards.
        diagonal = torch.eye(seq_len, dtype=torch.bool, device=query.device)
        allowed = allowed | (layout.key_padding[:, :, None] & diagonal[None])
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None], dropout_p=dropout)


class FlexLEDEncoderSelfAttention(_FastLEDEncoderSelfAttention):
    """LED encoder self-attention with FlexAttention over [global slots | band] keys (block-sparse)."""

    def _check_dropout(self, dropout: float) -> None:
        if dropout > 0:
            raise ConfigError(
                "attention_dropout",
                f"the 'flex' LED attention has no attention-probability dropout, but the model config has "
                f"attention_dropout={dropout}; set it to 0 (LED-base uses 0) or use the 'sdpa' attention")

    def _local_attention(self, query, key, value, layout: EncoderLayout, dropout: float) -> torch.Tensor:
        window = self.one_sided_attn_window_size
        block_mask = layout.block_masks.get(window)
        if block_mask is None:
            block_mask = build_flex_block_mask(layout, window)
            layout.block_masks[window] = block_mask
        n_slot_keys = padded_slot_count(layout.num_slots)
        if n_slot_keys:
            pad_slots = (0, 0, 0, n_slot_keys - layout.num_slots)
            key = torch.cat([F.pad(_gather_slots(key, layout, dim=2), pad_slots), key], dim=2)
            value = torch.cat([F.pad(_gather_slots(value, layout, dim=2), pad_slots), value], dim=2)
        return _flex_attention()(query, key, value, block_mask=block_mask)


# ----------------------------------------------------------------------------------------------------------
# Decoder attention on SDPA
# ----------------------------------------------------------------------------------------------------------


def _additive_mask(mask: torch.Tensor | None, batch_size: int, tgt_len: int, src_len: int, causal: bool,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """An SDPA-style mask (bool, or None meaning causal/none) as the additive float mask LED's eager
    attention expects; only for output_attentions, which needs the eager path."""
    if mask is None:
        if not causal:
            return None
        mask = torch.ones(tgt_len, src_len, dtype=torch.bool, device=device).tril(src_len - tgt_len)
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.expand(batch_size, 1, tgt_len, src_len)


class SdpaLEDDecoderAttention(LEDDecoderAttention):
    """LED decoder self-/cross-attention through `scaled_dot_product_attention`, same cache handling."""

    def forward(self, hidden_states, key_value_states=None, cache=None, attention_mask=None,
                output_attentions=False, past_key_values=None, **kwargs):
        # transformers is renaming `past_key_values` to `cache`; accept either spelling.
        cache = cache if cache is not None else past_key_values
        is_cross_attention = key_value_states is not None
        batch_size, tgt_len, _ = hidden_states.shape
        if output_attentions:
            src_len = key_value_states.shape[1] if is_cross_attention else tgt_len + (
                cache.get_seq_length(self.layer_idx) if cache is not None else 0)
            eager_mask = _additive_mask(attention_mask, batch_size, tgt_len, src_len,
                                        causal=not is_cross_attention and tgt_len > 1,
                                        dtype=hidden_states.dtype, device=hidden_states.device)
            return super().forward(hidden_states, key_value_states=key_value_states, cache=cache,
                                   attention_mask=eager_mask, output_attentions=True)

        query = _split_heads(self.q_proj(hidden_states), self.num_heads)
        layer_cache, reuse_cross_cache = None, False
        if cache is not None:
            if isinstance(cache, EncoderDecoderCache):
                reuse_cross_cache = is_cross_attention and bool(cache.is_updated.get(self.layer_idx))
                layer_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
            else:
                layer_cache = cache
        if reuse_cross_cache:
            key = layer_cache.layers[self.layer_idx].keys
            value = layer_cache.layers[self.layer_idx].values
        else:
            source = key_value_states if is_cross_attention else hidden_states
            key = _split_heads(self.k_proj(source), self.num_heads)
            value = _split_heads(self.v_proj(source), self.num_heads)
            if layer_cache is not None:
                key, value = layer_cache.update(key, value, self.layer_idx)
                if is_cross_attention and isinstance(cache, EncoderDecoderCache):
                    cache.is_updated[self.layer_idx] = True

        if attention_mask is not None and attention_mask.dtype != torch.bool:
            attention_mask = attention_mask.to(query.dtype)
        # transformers' sdpa masks are None for a plain causal mask (no padding, no cached prefix, or a
        # static cache whose prefix is empty): SDPA's top-left causal alignment is right for all of them.
        is_causal = not is_cross_attention and attention_mask is None and tgt_len > 1
        output = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, scale=self.scaling)
        return self.out_proj(_merge_heads(output)), None, cache


# ----------------------------------------------------------------------------------------------------------
# Switching a model
# ----------------------------------------------------------------------------------------------------------

_ENCODER_CLASSES = {"hf": LEDEncoderSelfAttention, "sdpa": SdpaLEDEncoderSelfAttention,
                    "flex": FlexLEDEncoderSelfAttention}
_DECODER_CLASSES = {"hf": LEDDecoderAttention, "sdpa": SdpaLEDDecoderAttention, "flex": SdpaLEDDecoderAttention}
_EAGER_CONFIG_ATTR = "_seq2seq_es_eager_config"


def _set_decoder_masks(decoder: LEDDecoder, impl: str) -> None:
    """The decoder builds its masks for the attention implementation named in its config: give it a
    config copy that says "sdpa" (boolean masks, None where SDPA's is_causal or no mask is exact) and
    restore the shared config for "hf"."""
    eager_config = getattr(decoder, _EAGER_CONFIG_ATTR, None)
    if impl == "hf":
        if eager_config is not None:
            decoder.config = eager_config
            delattr(decoder, _EAGER_CONFIG_ATTR)
        return
    if eager_config is None:
        setattr(decoder, _EAGER_CONFIG_ATTR, decoder.config)
        eager_config = decoder.config
    sdpa_config = copy.copy(eager_config)
    sdpa_config._attn_implementation = "sdpa"
    decoder.config = sdpa_config


def led_attention_impl(model: nn.Module) -> str | None:
    """Which implementation the model's LED encoder attention currently uses (None: not an LED model)."""
    for module in model.modules():
        if isinstance(module, LEDEncoderSelfAttention):
            for name, cls in _ENCODER_CLASSES.items():
                if type(module) is cls:
                    return name
    return None


def apply_led_attention(model: nn.Module, impl: str, *, config_key: str = "model.attention") -> nn.Module:
    """Switch every LED encoder self-attention and decoder attention in `model` to `impl` ("hf", "sdpa",
    "flex"), in place; returns the model. Parameters, buffers and state_dict keys are unchanged.

    `config_key` names the setting in error messages."""
    if impl not in ATTENTION_IMPLS:
        raise UnknownNameError("LED attention implementation", impl, ATTENTION_IMPLS)
    encoder_attentions = [m for m in model.modules() if isinstance(m, LEDEncoderSelfAttention)]
    if not encoder_attentions:
        raise ConfigError(config_key, f"the '{impl}' attention is for LED models, but {type(model).__name__} "
                                      f"has no LED encoder self-attention")
    for module in encoder_attentions:
        module.__class__ = _ENCODER_CLASSES[impl]
    for module in model.modules():
        if isinstance(module, LEDDecoderAttention):
            module.__class__ = _DECODER_CLASSES[impl]
        elif isinstance(module, LEDDecoder):
            _set_decoder_masks(module, impl)
    return model
