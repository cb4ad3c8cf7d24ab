"""Guards found by a mutation audit of seq2seq_es/kernels/: each test fails under a plausible bug
(a mutant) that the rest of the suite let through, and passes on the code as it is. Every test
compares against an independent reference: transformers' own attention, a dense masked softmax
written out here, or the same examples unpacked; fp32, tight tolerances."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

# FlexAttention's uncompiled CPU forward warns on every call; that path is the one tested here.
pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention.*", "ignore:.*FlexAttention.*")


# ------------------------------------------------------------------------------------------------
# BART (kernels/bart_attention.py, kernels/read_free_masks.py)


def _bart_pair():
    from seq2seq_es.bench.shapes import build_model, get_shape
    from seq2seq_es.kernels.bart_attention import apply_bart_attention

    shape = get_shape("barto-tiny")
    reference = build_model(shape, torch.device("cpu"), 0, 0.0).eval()
    return shape, reference, apply_bart_attention(copy.deepcopy(reference), "sdpa").eval()


def _bart_source(shape, generator):
    ids = torch.randint(shape.first_plain_id, shape.vocab_size, (3, 30), generator=generator)
    mask = torch.ones(3, 30, dtype=torch.long)
    mask[1, 21:], mask[2, 9:] = 0, 0
    return ids.masked_fill(mask == 0, shape.pad_token_id), mask


@pytest.mark.parametrize("q_length, kv_length, q_offset, padded", [
    (3, 5, 2, False), (4, 4, 0, False), (1, 6, 5, False), (3, 5, 2, True), (4, 4, 0, True)])
def test_read_free_causal_masks_mean_what_transformers_masks_mean(q_length, kv_length, q_offset,
                                                                  padded):
    # Guards read_free_mask: None (SDPA's top-left is_causal) only where that equals transformers'
    # causal mask: one query, or as many keys as queries; a cached prefix (q < kv) needs a mask.
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    from seq2seq_es.kernels.read_free_masks import read_free_mask

    attention_mask = None
    if padded:
        attention_mask = torch.ones(2, kv_length, dtype=torch.long)
        attention_mask[1, -1] = 0
    kwargs = dict(batch_size=2, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                  kv_offset=0, mask_function=causal_mask_function, attention_mask=attention_mask,
                  allow_is_causal_skip=True, dtype=torch.float32, device=torch.device("cpu"))
    expected = sdpa_mask(**{**kwargs, "allow_is_causal_skip": False}).expand(2, 1, q_length,
                                                                              kv_length)
    got = read_free_mask(**dict(kwargs))
    if got is None:   # what SDPA then does: is_causal (top-left) for several queries, else all
        got = torch.ones(q_length, kv_length, dtype=torch.bool)
        got = got.tril() if q_length > 1 else got
    torch.testing.assert_close(got.expand(2, 1, q_length, kv_length), expected)


def test_bart_sdpa_encoder_takes_a_users_per_query_4d_mask_as_transformers_does():
    # Guards bart_attention.attention: a [B, 1, q, k] boolean mask (not key padding) must go to
    # transformers' SDPA unchanged, not through the one-row key-padding feature.
    shape, reference, ours = _bart_pair()
    reference.set_attn_implementation("sdpa")
    ids, mask = _bart_source(shape, torch.Generator().manual_seed(4))
    length = ids.shape[1]
    band = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs() <= 4
    mask_4d = (band[None] & mask.bool()[:, None, :])[:, None]     # [B, 1, q, k]
    with torch.no_grad():
        expected = reference.get_encoder()(input_ids=ids, attention_mask=mask_4d).last_hidden_state
        got = ours.get_encoder()(input_ids=ids, attention_mask=mask_4d).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_padded_key_attention_honours_an_explicit_scale():
    # Guards padded_key_attention: `scaling` must be used (not 1/sqrt(head_dim) regardless).
    from seq2seq_es.kernels.bart_attention import padded_key_attention

    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 16, generator=gen) for _ in range(3))
    key_mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    key = torch.cat([key, torch.randn(2, 3, 2, 16, generator=gen) * 50], dim=2)
    value = torch.cat([value, torch.randn(2, 3, 2, 16, generator=gen)], dim=2)
    got = padded_key_attention(query, key, value, key_mask[:, None, None, :], 0.0, 0.9)
    scores = (query @ key.transpose(-1, -2)) * 0.9
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    expected = (scores.softmax(-1) @ value).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_padded_key_attention_pads_the_head_dim_to_a_multiple_of_8(monkeypatch):
    # Guards the feature's purpose (flash needs head dims in multiples of 8); otherwise only the
    # GPU test notices (the result is the same on the CPU).
    from seq2seq_es.kernels import bart_attention

    seen = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(bart_attention.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: seen.append((q.shape[-1], k.shape[-1], v.shape[-1]))
                        or real(q, k, v, **kw))
    for head_dim in (64, 60, 7):
        q = k = v = torch.randn(1, 2, 3, head_dim)
        bart_attention.padded_key_attention(q, k, v, torch.ones(1, 1, 1, 3, dtype=torch.bool),
                                            0.0, None)
        padded = seen[-1][0]
        assert seen[-1] == (padded, padded, padded) and padded % 8 == 0 and padded > head_dim


# ------------------------------------------------------------------------------------------------
# LED (kernels/led_attention.py)


def _led_model(attention_dropout: float = 0.0, sharpen: float = 1.0):
    """test_led_attention's tiny LED; `sharpen` scales the query/key projections (local and
    global) so that attention is peaked: at init scores are ~0 and any keys give ~uniform weights,
    which hides a wrong key."""
    from test_led_attention import tiny_led

    model = tiny_led(attention_dropout)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".self_attn.longformer_self_attn." in name and any(
                    part in name for part in ("query.", "key.", "query_global.", "key_global.")):
                param.mul_(sharpen)
    return model


def test_led_sdpa_in_eval_applies_no_attention_dropout():
    # Guards the `if self.training` on both dropouts (encoder and decoder): evaluation and
    # generation must be deterministic and equal to transformers' own attention.
    from test_led_attention import tiny_batch

    from seq2seq_es.kernels.led_attention import apply_led_attention

    model = _led_model(attention_dropout=0.5).eval()
    batch = tiny_batch(decoder_padding=True)
    with torch.no_grad():
        expected = apply_led_attention(model, "hf")(**batch)
        got = apply_led_attention(model, "sdpa")(**batch)
    torch.testing.assert_close(got.encoder_last_hidden_state, expected.encoder_last_hidden_state,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)


def test_led_flex_with_peaked_attention_equals_transformers():
    # Guards the flex encoder's key/value assembly ([global slots | sequence]): with random tiny
    # weights attention is ~uniform and keys taken from the wrong tensor go unnoticed.
    from test_led_attention import tiny_batch

    from seq2seq_es.kernels.led_attention import apply_led_attention

    model = _led_model(sharpen=8.0).eval()
    batch = tiny_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "global_attention_mask")}
    with torch.no_grad():
        expected = apply_led_attention(model, "hf").get_encoder()(**inputs).last_hidden_state
        got = apply_led_attention(model, "flex").get_encoder()(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# One-sided windows at the block-table edges (128-token tiles): k_start - q_end = window at 129 and
# 257, k_end - q_start = window + 1 at 254; 200 (test_led_attention) hits neither.
@pytest.mark.parametrize("window", [127, 128, 129, 254, 255, 257])
@pytest.mark.parametrize("globals_0, globals_1", [([0, 130, 500], [5]), ([0, 1, 2], [0])],
                         ids=["scattered-globals", "prefix-globals"])
def test_led_flex_block_mask_is_exact_at_tile_edge_windows(window, globals_0, globals_1):
    # Guards build_flex_block_mask's band_touches / band_covers comparisons (off by one: a tile
    # that the band just reaches skipped, or one that it just misses marked full).
    from test_led_attention import block_table, led_reference_mask

    from seq2seq_es.kernels.led_attention import (FLEX_BLOCK_SIZE, build_encoder_layout,
                                                  build_flex_block_mask, find_row_spans,
                                                  make_flex_mask_mod, padded_slot_count)

    batch, seq_len = 2, 1000
    key_padding = torch.zeros(batch, seq_len, dtype=torch.bool)
    key_padding[1, 900:] = True
    is_global = torch.zeros(batch, seq_len, dtype=torch.bool)
    is_global[0, globals_0], is_global[1, globals_1] = True, True
    num_slots = int(is_global.sum(1).max())
    layout = build_encoder_layout(key_padding, is_global, num_slots,
                                  row_spans=find_row_spans(key_padding, is_global))
    block_mask = build_flex_block_mask(layout, window)
    n_slot_keys = padded_slot_count(num_slots)
    kv_len = n_slot_keys + seq_len
    n_kv_blocks = -(-kv_len // FLEX_BLOCK_SIZE)
    partial = block_table(block_mask.kv_num_blocks, block_mask.kv_indices, n_kv_blocks)
    full = block_table(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, n_kv_blocks)

    def elements(table):
        return table.repeat_interleave(FLEX_BLOCK_SIZE, 1).repeat_interleave(
            FLEX_BLOCK_SIZE, 2)[:, :seq_len, :kv_len]

    element_mask = make_flex_mask_mod(layout, window)(
        torch.arange(batch)[:, None, None], None, torch.arange(seq_len)[None, :, None],
        torch.arange(kv_len)[None, None, :])
    attended = (elements(partial) & element_mask) | elements(full)
    # back to sequence positions: slot s of row b is that row's s-th global token
    as_positions = attended[:, :, n_slot_keys:].clone()
    for row in range(batch):
        for slot in range(int(is_global[row].sum())):
            as_positions[row, :, layout.slot_positions[row, slot]] |= attended[row, :, slot]
    expected = led_reference_mask(key_padding, is_global, window)
    live = ~key_padding
    assert torch.equal(as_positions[live], expected[live])


def test_led_sdpa_mask_leaves_no_row_without_a_key(monkeypatch):
    # Guards the padding rows' own diagonal: a row with every key masked gives NaN on GPU SDPA
    # kernels (the CPU's math path returns zeros, so no result test here can see it).
    from test_led_attention import tiny_batch

    from seq2seq_es.kernels import led_attention

    rows_without_keys = []
    real = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            rows_without_keys.append(int((~attn_mask.any(-1)).sum()))
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(led_attention.F, "scaled_dot_product_attention", spy)
    model = led_attention.apply_led_attention(_led_model(), "sdpa").eval()
    with torch.no_grad():
        for with_globals in (False, True):   # without globals, padding rows reach no real key
            model(**tiny_batch(with_globals))
    assert rows_without_keys and max(rows_without_keys) == 0


# ------------------------------------------------------------------------------------------------
# T5 (kernels/t5_attention.py)


def _t5_reference():
    """test_t5_attention's tiny T5 on transformers' eager attention, with a bias large enough
    to matter next to q.k."""
    from test_t5_attention import tiny_config
    from transformers import T5ForConditionalGeneration
    from transformers.models.t5.modeling_t5 import T5Attention

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_config())
    model.set_attn_implementation("eager")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, T5Attention) and module.has_relative_attention_bias:
                module.relative_attention_bias.weight.normal_(0.0, 2.0)
    return model.eval()


def _t5_batch():
    from test_t5_attention import SOURCE_LENGTHS, TARGET_LENGTHS, padded

    generator = torch.Generator().manual_seed(1)
    input_ids, attention_mask = padded(SOURCE_LENGTHS, generator)
    labels, target_mask = padded(TARGET_LENGTHS, generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": labels.masked_fill(target_mask == 0, -100),
            "decoder_attention_mask": target_mask}


@pytest.mark.parametrize("impl", ["sdpa", "flex"])
def test_t5_prepared_additive_float_decoder_mask_gives_the_same_logits(impl):
    # Guards _sdpa_additive_mask's float branch: a user's additive 4D mask (0 / dtype min) must be
    # added to the position bias, not replace or drop it.
    from seq2seq_es.kernels.t5_attention import apply_t5_attention

    reference = _t5_reference()
    batch = _t5_batch()
    keep = batch["decoder_attention_mask"].bool()
    length = keep.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & keep[:, None, None]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ours = apply_t5_attention(copy.deepcopy(reference), impl).eval()
    with torch.no_grad():
        expected = reference(**batch).logits
        got = ours(**{**batch, "decoder_attention_mask": additive}).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_t5_sdpa_masked_keys_get_no_weight_in_every_dtype(dtype):
    # Guards the fill value of _sdpa_additive_mask: it must swamp the bias in the query's dtype
    # (a value that only looks large in fp32, such as finfo.min scaled down, leaks in fp16).
    from seq2seq_es.kernels.t5_attention import _sdpa_additive_mask, apply_t5_attention

    model = apply_t5_attention(_t5_reference(), "sdpa")
    attention = model.encoder.block[0].layer[0].SelfAttention.to(dtype)
    keep = torch.tensor([[True] * 6 + [False] * 4, [True] * 9 + [False]])
    query = torch.zeros(2, attention.n_heads, 10, attention.key_value_proj_dim, dtype=dtype)
    additive = _sdpa_additive_mask(attention, query, 10, keep[:, None, None, :], 0)
    weights = additive.float().softmax(-1)            # q.k = 0: the weights of the bias alone
    bias = attention.compute_bias(10, 10).float()     # transformers' own table
    expected = bias.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
    assert (weights[~keep[:, None, None, :].expand_as(weights)] == 0).all()
    torch.testing.assert_close(weights, expected, rtol=1e-2 if dtype != torch.float32 else 1e-5,
                               atol=1e-2 if dtype != torch.float32 else 1e-6)


@pytest.mark.parametrize("q_length, q_offset", [(1, 5), (3, 3)], ids=["one-query", "chunk"])
@pytest.mark.parametrize("pattern", ["causal", "bidirectional"])
def test_t5_flex_mask_is_transformers_mask_for_a_short_2d_mask(q_length, q_offset, pattern):
    # Guards flex_mask's padding of a 2D mask shorter than the keys: transformers' mask hooks treat
    # the missing keys as padding (prepare_padding_mask pads with 0), so flex_mask must too. (In
    # T5's own flows causality hides those keys; the hook contract is what this checks.)
    from torch.nn.attention.flex_attention import BlockMask, create_mask
    from transformers.masking_utils import (bidirectional_mask_function, causal_mask_function,
                                            sdpa_mask)

    from seq2seq_es.kernels.t5_attention import flex_mask

    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])   # 6 of 10 keys
    mask_function = causal_mask_function if pattern == "causal" else bidirectional_mask_function
    kwargs = dict(batch_size=2, q_length=q_length, kv_length=10, q_offset=q_offset, kv_offset=0,
                  mask_function=mask_function)
    expected = sdpa_mask(**kwargs, attention_mask=attention_mask.bool(),
                         allow_is_causal_skip=False, allow_is_bidirectional_skip=False,
                         device=torch.device("cpu"))
    got = flex_mask(**kwargs, attention_mask=attention_mask, device="cpu")
    if isinstance(got, BlockMask):
        got = create_mask(got.mask_mod, 2, None, q_length, 10)
    torch.testing.assert_close(got.expand_as(expected), expected)
    assert not expected[..., 6:].any()


@pytest.mark.parametrize("impl", ["sdpa", "flex"])
def test_t5_decoder_self_attention_without_a_mask_is_causal(impl):
    # Guards _forward's causal_without_mask: transformers hands no mask (a paged cache, SDPA's
    # causal skip) and the decoder's self-attention must stay causal on either kernel.
    from seq2seq_es.kernels.t5_attention import apply_t5_attention

    model = apply_t5_attention(_t5_reference(), impl).eval()
    attention = model.decoder.block[0].layer[0].SelfAttention
    hidden = torch.randn(2, 7, model.config.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = attention(hidden, mask=None)[0]
        heads, d_kv = attention.n_heads, attention.key_value_proj_dim
        q, k, v = (proj(hidden).view(2, 7, heads, d_kv).transpose(1, 2)
                   for proj in (attention.q, attention.k, attention.v))
        # transformers' own bias table (T5Attention.compute_bias), unscaled scores as T5 has them
        scores = q @ k.transpose(-1, -2) + attention.compute_bias(7, 7)
        scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
        expected = attention.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, -1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Packed batches (kernels/packed_attention.py)


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_packed_dense_attention_applies_attention_dropout_in_training_only(name):
    # Guards _attend's dropout_p and the `if module.training` of both packed forwards: T5 trains
    # packed batches on the dense path precisely to keep its attention dropout.
    from test_packing import _collators, _features, _tiny, _unmarked
    from transformers.models.bart.modeling_bart import BartAttention
    from transformers.models.t5.modeling_t5 import T5Attention

    from seq2seq_es.engine.builders import set_dropout
    from seq2seq_es.engine.loss import token_ce_sum
    from seq2seq_es.kernels.packed_attention import install_packed_attention

    model, tokenizer = _tiny(name)
    set_dropout(model, 0.0)
    for module in model.modules():   # attention-probability dropout only
        if isinstance(module, (BartAttention, T5Attention)):
            module.dropout = 0.5
    reference = copy.deepcopy(model).eval()
    plain, packed = _collators(model, tokenizer)
    features = _features(model.config.vocab_size)
    unpacked = dict(plain(_unmarked(features)))
    unpacked_labels = unpacked.pop("labels")
    install_packed_attention(model, "dense")
    batch = dict(packed(features))
    labels = batch.pop("labels")
    with torch.no_grad():
        expected = token_ce_sum(reference(**unpacked).logits, unpacked_labels)
        assert token_ce_sum(model.eval()(**batch).logits, labels).item() == pytest.approx(
            expected.item(), rel=1e-5)
        model.train()
        first, second = (model(**batch).logits for _ in range(2))
    real = labels != -100
    assert (first[real] - second[real]).abs().max() > 1e-3


def test_packed_auto_and_dense_never_take_flex_with_dropout_or_when_told_dense():
    # Guards _use_flex on a GPU (the only place it can pick flex): FlexAttention has no dropout,
    # so "auto" with attention dropout and "dense" always must stay on SDPA. No CUDA is needed:
    # the choice reads only query.is_cuda.
    from types import SimpleNamespace

    from seq2seq_es.kernels.packed_attention import _STATE_ATTR, _use_flex

    def module(impl):
        return SimpleNamespace(**{_STATE_ATTR: SimpleNamespace(impl=impl)})

    on_gpu, on_cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    assert _use_flex(module("auto"), on_gpu, 0.0) is True
    assert _use_flex(module("auto"), on_gpu, 0.1) is False
    assert _use_flex(module("auto"), on_cpu, 0.0) is False
    assert _use_flex(module("dense"), on_gpu, 0.0) is False
    assert _use_flex(module("flex"), on_cpu, 0.0) is True


# ------------------------------------------------------------------------------------------------
# The lean cross-entropy (kernels/lean_ce.py)


def test_lean_ce_under_autocast_multiplies_in_the_autocast_dtype():
    # Guards _compute_dtype: under autocast the head's matmul runs in bf16 (as the model's lm_head
    # would), the softmax in fp32; ignoring autocast computes another (fp32) loss.
    from test_lean_ce import random_problem

    from seq2seq_es.kernels.lean_ce import chunked_cross_entropy_sum

    hidden, weight, bias, labels = random_problem(seed=3)
    logits = (hidden.detach().bfloat16() @ weight.detach().bfloat16().T).float() + bias.detach()
    expected = F.cross_entropy(logits, labels, reduction="sum", ignore_index=-100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_cross_entropy_sum(hidden, weight, labels, bias, chunk_size=10)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
