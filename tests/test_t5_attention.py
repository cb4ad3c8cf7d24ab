"""T5 attention on SDPA / FlexAttention against transformers' T5, on a tiny random model with padding."""

import copy
import warnings

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration
from torch.nn.attention.flex_attention import BlockMask, create_mask
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Attention

from seq2seq_es.errors import ConfigError, UnknownNameError
from seq2seq_es.kernels.t5_attention import (
    FLEX_MASK_IMPLEMENTATION,
    SDPA_MASK_IMPLEMENTATION,
    apply_t5_attention,
    flex_mask,
    relative_position_buckets,
)
from seq2seq_es.bench.t5_check import gpu_check, time_train_steps

# The CPU flex path is torch's uncompiled reference; it warns that it is not fused.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

SOURCE_LENGTHS = [20, 13, 6]  # longer than max_distance 16: the log-spaced and clamped buckets are used
TARGET_LENGTHS = [9, 6, 3]


def tiny_config(**overrides) -> T5Config:
    settings = dict(d_model=32, d_kv=8, num_heads=2, num_layers=2, num_decoder_layers=2, d_ff=64,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    feed_forward_proj="gated-gelu", vocab_size=128, decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    return T5Config(**{**settings, **overrides})


def padded(lengths: list[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(2, 128, (len(lengths), max(lengths)), generator=generator)
    keep = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~keep, 0), keep.long()


@pytest.fixture(scope="module")
def reference() -> T5ForConditionalGeneration:
    """transformers' T5 computing attention eagerly: the definition we must reproduce."""
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_config())
    model.set_attn_implementation("eager")
    # A small init keeps the relative bias from being negligible next to q.k of random weights.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, T5Attention) and module.has_relative_attention_bias:
                module.relative_attention_bias.weight.normal_(0.0, 2.0)
    return model


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids, attention_mask = padded(SOURCE_LENGTHS, generator)
    labels, target_mask = padded(TARGET_LENGTHS, generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": labels.masked_fill(target_mask == 0, -100), "decoder_attention_mask": target_mask}


def select(batch: dict, decoder_mask: bool) -> dict:
    return batch if decoder_mask else {k: v for k, v in batch.items() if k != "decoder_attention_mask"}


def loss_logits_grads(model, inputs) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    output = model(**inputs)
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return output.loss.detach(), output.logits.detach(), grads


def test_buckets_match_transformers():
    offsets = torch.arange(-300, 301)[None, :] - torch.arange(0, 3)[:, None]
    for bidirectional in (True, False):
        for num_buckets, max_distance in ((8, 16), (32, 128)):
            ours = relative_position_buckets(offsets, bidirectional=bidirectional, num_buckets=num_buckets,
                                             max_distance=max_distance)
            theirs = T5Attention._relative_position_bucket(offsets, bidirectional=bidirectional,
                                                            num_buckets=num_buckets, max_distance=max_distance)
            assert torch.equal(ours, theirs)
            assert ours.min() >= 0 and ours.max() == num_buckets - 1


def test_flex_mask_combines_pattern_padding_and_offsets():
    padding = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])

    def causal(batch, head, q_idx, kv_idx):
        return kv_idx <= q_idx

    # Three new queries after two cached tokens, against all five keys.
    expected = (torch.arange(5)[None, :] <= torch.arange(2, 5)[:, None])[None, None] & padding.bool()[:, None, None]
    block_mask = flex_mask(2, 3, 5, q_offset=2, mask_function=causal, attention_mask=padding)
    assert isinstance(block_mask, BlockMask)
    assert torch.equal(create_mask(block_mask.mask_mod, 2, None, 3, 5), expected)
    # Keys that start at absolute position 2 (kv_offset) are looked up in the padding at 2, 3, 4.
    shifted = flex_mask(1, 2, 3, q_offset=3, kv_offset=2, mask_function=causal,
                        attention_mask=torch.tensor([[1, 1, 1, 0, 1]]))
    assert torch.equal(create_mask(shifted.mask_mod, 1, None, 2, 3),
                       torch.tensor([[[[True, False, False], [True, False, True]]]]))
    # A generation step: one query, as a dense boolean mask for SDPA.
    step = flex_mask(2, 1, 5, q_offset=4, mask_function=causal, attention_mask=padding)
    assert step.dtype == torch.bool and torch.equal(step, padding.bool()[:, None, None, :])


@pytest.mark.parametrize("decoder_mask", [True, False], ids=["decoder-padding-mask", "decoder-causal-only"])
@pytest.mark.parametrize("hf_impl", ["eager", "sdpa"])
def test_sdpa_matches_hf_logits_and_all_gradients(reference, batch, hf_impl, decoder_mask):
    hf_model = copy.deepcopy(reference)
    hf_model.set_attn_implementation(hf_impl)
    ours = apply_t5_attention(copy.deepcopy(reference), "sdpa")
    inputs = select(batch, decoder_mask)

    hf_loss, hf_logits, hf_grads = loss_logits_grads(hf_model, inputs)
    loss, logits, grads = loss_logits_grads(ours, inputs)

    torch.testing.assert_close(loss, hf_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, hf_logits, rtol=1e-4, atol=1e-5)
    assert grads.keys() == hf_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, hf_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    bias_grad = grads["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    assert bias_grad.abs().sum() > 0


@pytest.mark.parametrize("decoder_mask", [True, False], ids=["decoder-padding-mask", "decoder-causal-only"])
@pytest.mark.parametrize("layout", ["dense", "distance"])
def test_flex_forward_matches_hf(reference, batch, layout, decoder_mask):
    ours = apply_t5_attention(copy.deepcopy(reference), "flex", flex_bias_layout=layout).eval()
    inputs = select(batch, decoder_mask)
    with torch.no_grad():
        expected = reference.eval()(**inputs)
        got = ours(**inputs)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)


def test_changing_the_bias_changes_flex_and_sdpa_outputs(reference, batch):
    """Guards against a bias that silently never reaches the kernels."""
    inputs = select(batch, decoder_mask=False)
    for impl in ("sdpa", "flex"):
        model = apply_t5_attention(copy.deepcopy(reference), impl).eval()
        with torch.no_grad():
            before = model(**inputs).logits
            model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.mul_(-1)
            after = model(**inputs).logits
        assert (before - after).abs().max() > 1e-3, impl


@pytest.mark.parametrize("impl, layout", [("sdpa", "dense"), ("flex", "dense"), ("flex", "distance")])
def test_decoding_in_chunks_with_cache_matches_full_pass(reference, batch, impl, layout):
    """Decoding through the EncoderDecoderCache, one token (generation steps: SDPA) then several at once
    (past > 0: the bias is offset by the cached length), gives the teacher-forced logits."""
    ours = apply_t5_attention(copy.deepcopy(reference), impl, flex_bias_layout=layout).eval()
    decoder_input_ids = reference._shift_right(batch["labels"].clamp(min=0))
    with torch.no_grad():
        expected = reference.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    decoder_input_ids=decoder_input_ids).logits
        encoder_outputs = ours.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        cache, start = None, 0
        for size in (1, 1, 3, 4):
            output = ours(encoder_outputs=encoder_outputs, attention_mask=batch["attention_mask"],
                          decoder_input_ids=decoder_input_ids[:, start:start + size], cache=cache, use_cache=True)
            cache = output.cache
            assert isinstance(cache, EncoderDecoderCache)
            assert cache.get_seq_length() == start + size
            assert cache.cross_attention_cache.get_seq_length() == max(SOURCE_LENGTHS)
            torch.testing.assert_close(output.logits, expected[:, start:start + size], rtol=1e-4, atol=1e-5)
            start += size
    assert start == decoder_input_ids.shape[1]


@pytest.mark.parametrize("impl", ["sdpa", "flex"])
def test_prepared_4d_decoder_mask_gives_the_same_logits(reference, batch, impl):
    """transformers passes a ready 4D mask through untouched; flex layers then run it on SDPA."""
    target_keep = batch["decoder_attention_mask"].bool()
    length = target_keep.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    prepared = causal[None, None] & target_keep[:, None, None, :]
    ours = apply_t5_attention(copy.deepcopy(reference), impl).eval()
    with torch.no_grad():
        expected = reference.eval()(**batch).logits
        got = ours(**{**batch, "decoder_attention_mask": prepared}).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 2], ids=["greedy", "beam2"])
def test_generate_gives_identical_tokens_for_hf_and_sdpa(reference, batch, num_beams):
    ours = apply_t5_attention(copy.deepcopy(reference), "sdpa").eval()
    # min_new_tokens keeps eos away so every step runs through the cache.
    settings = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=10,
                    min_new_tokens=10, num_beams=num_beams, do_sample=False)
    with torch.no_grad():
        expected = reference.eval().generate(**settings)
        got = ours.generate(**settings)
    assert expected.shape[1] == 11
    assert torch.equal(got, expected)


def test_flex_greedy_generation_matches_hf(reference, batch):
    ours = apply_t5_attention(copy.deepcopy(reference), "flex").eval()
    settings = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6,
                    min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        assert torch.equal(ours.generate(**settings), reference.eval().generate(**settings))


def test_apply_keeps_parameters_and_state_dict_and_hf_restores(reference):
    model = copy.deepcopy(reference)
    keys = list(model.state_dict().keys())
    params = {name: p for name, p in model.named_parameters()}
    for impl, attn_implementation in (("sdpa", SDPA_MASK_IMPLEMENTATION),
                                      ("flex", FLEX_MASK_IMPLEMENTATION), ("hf", "eager")):
        assert apply_t5_attention(model, impl) is model
        assert list(model.state_dict().keys()) == keys
        assert all(p is params[name] for name, p in model.named_parameters())
        assert model.encoder.config._attn_implementation == attn_implementation
        assert model.decoder.config._attn_implementation == attn_implementation
    assert all(type(m) is T5Attention for m in model.modules() if isinstance(m, T5Attention))


def test_output_attentions_is_refused(reference, batch):
    for impl in ("sdpa", "flex"):
        model = apply_t5_attention(copy.deepcopy(reference), impl).eval()
        with pytest.raises(ConfigError, match="output_attentions"), torch.no_grad():
            model(**select(batch, decoder_mask=False), output_attentions=True)


def test_bad_names_and_non_t5_models_are_refused(reference):
    with pytest.raises(UnknownNameError, match="'flash'.*hf, sdpa, flex|flex, hf, sdpa"):
        apply_t5_attention(copy.deepcopy(reference), "flash")
    with pytest.raises(UnknownNameError, match="flex bias layout"):
        apply_t5_attention(copy.deepcopy(reference), "flex", flex_bias_layout="sparse")
    bart = BartForConditionalGeneration(BartConfig(d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64))
    with pytest.raises(ConfigError, match="t5_attention.*no T5Attention"):
        apply_t5_attention(bart, "sdpa")


def test_sdpa_applies_attention_dropout_only_in_training(reference, batch):
    model = apply_t5_attention(copy.deepcopy(reference), "sdpa")
    for module in model.modules():
        if isinstance(module, T5Attention):
            module.dropout = 0.5
    inputs = select(batch, decoder_mask=False)
    with torch.no_grad():
        model.train()
        first = model(**inputs).logits
        second = model(**inputs).logits
        model.eval()
        evaluated = model(**inputs).logits
        expected = reference.eval()(**inputs).logits
    assert (first - second).abs().max() > 1e-3
    torch.testing.assert_close(evaluated, expected, rtol=1e-4, atol=1e-5)


def test_flex_refuses_training_with_attention_dropout(reference, batch):
    model = apply_t5_attention(copy.deepcopy(reference), "flex")
    for module in model.modules():
        if isinstance(module, T5Attention):
            module.dropout = 0.1
    with pytest.raises(ConfigError, match="dropout_rate"), torch.no_grad():
        model.train()(**select(batch, decoder_mask=False))


def test_time_train_steps_trains_and_times(reference, batch):
    model = apply_t5_attention(copy.deepcopy(reference), "sdpa")
    before = model.lm_head.weight.detach().clone()
    seconds = time_train_steps(model, select(batch, decoder_mask=False), dtype=torch.float32, steps=3, warmup=1)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    assert not torch.equal(model.lm_head.weight, before)


def test_gpu_check_runs_its_hf_and_sdpa_paths_on_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gpu_check("cpu", tiny=True, batch=2, source_len=24, target_len=8, impls=("hf", "hf-eager", "sdpa"),
                           steps=2, warmup=1)
    assert report["failures"] == {}
    assert set(report["step_s"]) == {"hf", "hf-eager", "sdpa"} and all(s > 0 for s in report["step_s"].values())
    assert report["speedup_vs_hf"]["hf"] == 1.0
    for label in ("hf", "hf-eager", "sdpa"):
        errors = report["vs_fp32_eager"][label]
        assert {"loss", "logits", "grad:shared.weight",
                "grad:decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"} <= errors.keys()
        assert all(e["max_rel"] < 1e-4 for e in errors.values()), errors
    assert all(e["max_rel"] < 1e-4 for e in report["vs_hf"]["sdpa"].values())
    with pytest.raises(ConfigError, match="CUDA"):
        gpu_check("cpu", tiny=True, impls=("flex",))
    with pytest.raises(UnknownNameError):
        gpu_check("cpu", tiny=True, impls=("flex-sparse",))
