"""BART on `model.attention sdpa` (kernels/bart_attention.py): the keys' padding as an extra
q/k feature, so that padded batches keep SDPA's flash kernel on a GPU. On the CPU the same
function runs SDPA's reference path: the model must compute exactly what transformers' masked
attention computes, in training (dropout included), evaluation and generation."""

from __future__ import annotations

import copy

import pytest
import torch

from seq2seq_es.bench.shapes import build_model, get_shape
from seq2seq_es.config import RunConfig, not_applying, validate
from seq2seq_es.errors import ConfigError, UnknownNameError
from seq2seq_es.kernels import bart_attention
from seq2seq_es.kernels.bart_attention import (KEY_PADDING_SDPA, apply_bart_attention,
                                               padded_key_attention)
from seq2seq_es.kernels.read_free_masks import drop_full_mask

SHAPE = get_shape("barto-tiny")


def _pair(dropout: float):
    reference = build_model(SHAPE, torch.device("cpu"), 0, dropout)
    ours = apply_bart_attention(copy.deepcopy(reference), "sdpa")
    return reference, ours


def _batch(padded: bool = True):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(SHAPE.first_plain_id, SHAPE.vocab_size, (3, 40), generator=generator)
    mask = torch.ones(3, 40, dtype=torch.long)
    if padded:
        mask[1, 25:], mask[2, 10:] = 0, 0
        ids[mask == 0] = SHAPE.pad_token_id
    labels = torch.randint(SHAPE.first_plain_id, SHAPE.vocab_size, (3, 12), generator=generator)
    labels[2, 8:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_training_forward_and_gradients_are_transformers_masked_attention(dropout, monkeypatch):
    reference, ours = _pair(dropout)
    calls = []
    monkeypatch.setattr(bart_attention, "padded_key_attention",
                        lambda *a: calls.append(1) or padded_key_attention(*a))
    batch = _batch()
    losses = []
    for model in (reference, ours):
        torch.manual_seed(5)  # the attention dropout draws the same masks in both
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss)
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-6)
    for (name, expected), got in zip(reference.named_parameters(), ours.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-5, atol=1e-7, msg=name)
    # encoder self-attention and cross-attention of both layers took the extra feature; the
    # decoder's causal self-attention stayed on transformers' function
    assert len(calls) == 2 * 2


def test_generation_is_the_same(monkeypatch):
    reference, ours = _pair(0.1)
    batch = _batch()
    calls = []
    monkeypatch.setattr(bart_attention, "padded_key_attention",
                        lambda *a: calls.append(a[0].shape[2]) or padded_key_attention(*a))
    with torch.no_grad():
        expected, got = (m.eval().generate(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"],
                                           max_new_tokens=8, num_beams=3, do_sample=False)
                         for m in (reference, ours))
    assert torch.equal(got, expected)
    # the encoder's two self-attentions take the extra feature; the decoding steps' single
    # queries do not (their cross-attention would copy the cached keys at every step)
    assert calls == [40, 40]


def test_padding_keys_get_no_weight_and_real_keys_their_own_scores():
    # 3 queries over 4 keys, the last 2 padding (large, so that any weight on them would show)
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 2, 3, 64), torch.randn(1, 2, 4, 64), torch.randn(1, 2, 4, 64)
    key[:, :, 2:] *= 100
    key_mask = torch.tensor([True, True, False, False]).view(1, 1, 1, 4)
    got = padded_key_attention(query, key, value, key_mask, 0.0, None)     # [B, q, H, d]
    expected = torch.nn.functional.scaled_dot_product_attention(query, key[:, :, :2],
                                                                value[:, :, :2])
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_an_unpadded_batch_goes_without_its_mask():
    padded, full = _batch(padded=True), _batch(padded=False)
    assert drop_full_mask(padded) is padded
    assert "attention_mask" not in drop_full_mask(full) and "input_ids" in drop_full_mask(full)
    # without a mask the model takes transformers' own SDPA path (no extra feature) and computes
    # the same as with the all-ones mask
    _, ours = _pair(0.0)
    with torch.no_grad():
        expected = ours.eval()(**full).logits
        got = ours(**drop_full_mask(full)).logits
    torch.testing.assert_close(got, expected)


def test_hf_restores_transformers_attention():
    model = build_model(SHAPE, torch.device("cpu"), 0, 0.0)
    before = model.config._attn_implementation
    apply_bart_attention(model, "sdpa")
    assert model.config._attn_implementation == KEY_PADDING_SDPA
    apply_bart_attention(model, "hf")
    assert model.config._attn_implementation == before
    with pytest.raises(UnknownNameError, match="flex"):
        apply_bart_attention(model, "flex")


def test_bart_reads_model_attention_and_refuses_flex():
    cfg = RunConfig()
    cfg.model.name = "barto-tiny"
    assert "model.attention" not in not_applying(cfg)
    cfg.model.attention = "sdpa"
    validate(cfg)
    cfg.model.attention = "flex"
    with pytest.raises(ConfigError, match="model.attention") as caught:
        validate(cfg)
    assert "hf, sdpa" in str(caught.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_padded_batches_take_the_flash_kernel():
    """What the feature is for (issue 12): on a padded bf16 batch the encoder self-attention and
    the cross-attention run torch's flash kernel (transformers' masked path: the memory-efficient
    one), with the same loss to bf16 precision."""
    from seq2seq_es.engine.builders import set_cudnn_attention

    earlier = set_cudnn_attention(False)   # as get_model sets it (model.cudnn_attention false)
    try:
        _flash_on_a_gpu()
    finally:
        set_cudnn_attention(earlier)


def _flash_on_a_gpu():
    from torch.profiler import ProfilerActivity, profile

    reference, ours = (m.to("cuda", torch.bfloat16) for m in _pair(0.1))
    batch = {k: v.cuda() for k, v in _batch().items()}

    def kernels(model):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(**batch).loss.backward()
        names = [event.name for event in prof.events()]
        return {kind: sum(f"_scaled_dot_product_{kind}_attention" == n.removeprefix("aten::")
                          for n in names) for kind in ("flash", "efficient")}

    # ours: the 2 encoder self-attentions and 2 cross-attentions on flash (the 2 causal decoder
    # self-attentions have an explicit mask: another kernel); transformers': the decoder's on
    # flash (an unpadded causal mask is skipped), the padded ones on the memory-efficient kernel
    assert kernels(ours.train())["flash"] == 4
    assert kernels(reference.train()) == {"flash": 2, "efficient": 4}
    with torch.no_grad():
        expected, got = (m.eval()(**batch).loss.float().item() for m in (reference, ours))
    assert got == pytest.approx(expected, rel=2e-2)
