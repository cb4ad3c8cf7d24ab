"""Packed seq2seq batches (train.batching=packed, issue 12.3): the plan, the collator, the
document-masked attention (equal loss and gradients to the same examples unpacked), the wiring."""

from __future__ import annotations

import copy
import random
import warnings

import numpy as np
import pytest
import torch

from seq2seq_es.data.collator import Seq2SeqCollator
from seq2seq_es.data.packing import (PACKED_FEATURE, PackedCollator, PackedPlan, layout_rows,
                                     next_fit_rows)
from seq2seq_es.engine.loss import token_ce_sum
from seq2seq_es.errors import ConfigError, DataError
from seq2seq_es.kernels.packed_attention import (PackedLayout, install_packed_attention,
                                                 is_installed, uninstall_packed_attention)

# (source, target) lengths: rows of 16 + 12 tokens hold two or three of them.
LENGTHS = [(5, 4), (9, 3), (3, 6), (7, 5), (4, 2), (6, 7), (2, 1), (8, 4)]
ROWS, SOURCE_LEN, TARGET_LEN = 4, 16, 12


@pytest.fixture(autouse=True)
def _quiet_cpu_flex():
    # FlexAttention's uncompiled CPU forward warns on every call; that path is what is tested here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention.*")
        warnings.filterwarnings("ignore", message=".*FlexAttention.*")
        yield


def _features(vocab: int, lengths=LENGTHS, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(5, vocab, (s,), generator=g).tolist(),
             "labels": torch.randint(5, vocab, (t,), generator=g).tolist(), PACKED_FEATURE: True}
            for s, t in lengths]


def _unmarked(features: list[dict]) -> list[dict]:
    return [{k: v for k, v in f.items() if k != PACKED_FEATURE} for f in features]


_MODELS: dict[str, tuple] = {}


def _tiny(name: str):
    if name not in _MODELS:
        from seq2seq_es.models import load_model_and_tokenizer
        _MODELS[name] = load_model_and_tokenizer(name, None)
    model, tokenizer = _MODELS[name]
    return copy.deepcopy(model).float(), tokenizer


def _collators(model, tokenizer):
    pad, start = tokenizer.pad_token_id, model.config.decoder_start_token_id
    return (Seq2SeqCollator(pad, start),
            PackedCollator(pad, start, rows=ROWS, source_len=SOURCE_LEN, target_len=TARGET_LEN))


def _loss_and_grads(model, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    batch = dict(batch)
    labels = batch.pop("labels")
    model.zero_grad(set_to_none=True)
    ce = token_ce_sum(model(**batch).logits, labels)
    ce.backward()
    return ce.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                       if p.grad is not None}


def _assert_grads_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, ref in expected.items():
        # 1e-5 of each tensor's scale: gradients that are exactly zero in exact arithmetic (the key
        # projection biases: softmax ignores a constant per query) are rounding noise in both.
        scale = ref.abs().max().item()
        torch.testing.assert_close(got[name], ref, rtol=1e-5, atol=1e-5 * scale + 1e-9,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------
# The model: packed equals unpacked


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_packed_batch_gives_the_loss_and_gradients_of_the_examples_unpacked(name, checkpointing):
    model, tokenizer = _tiny(name)
    from seq2seq_es.engine.builders import set_dropout
    set_dropout(model, 0.0)
    if checkpointing:
        from seq2seq_es.engine.builders import set_activation_checkpointing
        set_activation_checkpointing(model, True)
        model.train()   # checkpointing only acts in training mode; dropout is 0
    else:
        model.eval()
    plain, packed = _collators(model, tokenizer)
    features = _features(model.config.vocab_size)

    reference = copy.deepcopy(model)
    ref_loss, ref_grads = _loss_and_grads(reference, plain(_unmarked(features)))

    params_before = {n: p for n, p in model.named_parameters()}
    keys_before = list(model.state_dict())
    install_packed_attention(model, "dense")
    assert {n: p for n, p in model.named_parameters()} == params_before   # same Parameter objects
    assert list(model.state_dict()) == keys_before

    batch = packed(features)
    assert batch["input_ids"].shape == (ROWS, SOURCE_LEN)
    assert batch["labels"].shape == (ROWS, TARGET_LEN)
    assert int(batch["target_doc_ids"].max()) >= 1          # rows really hold several examples
    loss, grads = _loss_and_grads(model, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_long_documents_packed_give_the_loss_and_gradients_of_the_examples_unpacked(name):
    """Documents past T5's max_distance (128, 32 buckets, as t5s-tiny has them): a document
    starting at row position 330 must get the relative buckets of its own positions, which the
    short documents above never reach; BART's learned positions restart per document too."""
    model, tokenizer = _tiny(name)
    from seq2seq_es.engine.builders import set_dropout
    set_dropout(model, 0.0)
    model.eval()
    if name == "t5s-tiny":
        assert (model.config.relative_attention_num_buckets,
                model.config.relative_attention_max_distance) == (32, 128)
    lengths = [(330, 60), (250, 40), (140, 30), (200, 50), (180, 70), (260, 25)]
    pad, start = tokenizer.pad_token_id, model.config.decoder_start_token_id
    features = _features(model.config.vocab_size, lengths)
    reference = copy.deepcopy(model)
    ref_loss, ref_grads = _loss_and_grads(reference, Seq2SeqCollator(pad, start)(
        _unmarked(features)))
    install_packed_attention(model, "dense")
    batch = PackedCollator(pad, start, rows=3, source_len=600, target_len=130)(features)
    positions = batch["source_position_ids"]
    restarts = (positions[:, 1:] == 0) & (positions[:, :-1] != 0)   # a document begins
    assert int(restarts.nonzero()[:, 1].min()) + 1 >= 140   # later documents begin past 128
    assert int(batch["target_doc_ids"].max()) >= 1
    loss, grads = _loss_and_grads(model, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    _assert_grads_close(grads, ref_grads)


def test_without_document_masks_the_packed_loss_differs():
    """The comparison above can fail: packing without masks (the plain model) changes the loss."""
    model, tokenizer = _tiny("barto-tiny")
    model.eval()
    plain, packed = _collators(model, tokenizer)
    features = _features(model.config.vocab_size)
    ref_loss, ref_grads = _loss_and_grads(model, plain(_unmarked(features)))
    batch = {k: v for k, v in packed(features).items()
             if k not in ("source_doc_ids", "target_doc_ids", "source_position_ids",
                          "target_position_ids")}
    loss, grads = _loss_and_grads(model, batch)
    # Random tiny weights barely read the context, so the loss moves little (still ~10x the
    # tolerance); the gradients move by far more than it.
    assert abs(loss - ref_loss) > 5e-5 * ref_loss
    with pytest.raises(AssertionError):
        _assert_grads_close(grads, ref_grads)
    worst = max(((grads[n] - g).abs().max() / g.abs().max()).item() for n, g in ref_grads.items()
                if g.abs().max() > 1e-6)
    assert worst > 1e-2


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_flex_block_masks_give_the_dense_result(name):
    """FlexAttention (forward only on the CPU) with the BlockMasks matches the dense masks."""
    model, tokenizer = _tiny(name)
    model.eval()
    _, packed = _collators(model, tokenizer)
    batch = packed(_features(model.config.vocab_size))
    install_packed_attention(model, "dense")
    with torch.no_grad():
        dense = model(**batch).logits
        install_packed_attention(model, "flex")
        flex = model(**batch).logits
    real = batch["labels"] != -100
    torch.testing.assert_close(flex[real], dense[real], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (flex backward)")
@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_on_cuda_compiled_flex_gives_the_unpacked_loss_and_gradients(name):
    """The path "auto" takes on a GPU without attention dropout: compiled FlexAttention."""
    model, tokenizer = _tiny(name)
    from seq2seq_es.engine.builders import set_dropout
    set_dropout(model, 0.0)
    model.cuda().eval()
    plain, packed = _collators(model, tokenizer)
    features = _features(model.config.vocab_size)
    to_cuda = lambda batch: {k: v.cuda() for k, v in batch.items()}  # noqa: E731
    reference = copy.deepcopy(model)
    ref_loss, ref_grads = _loss_and_grads(reference, to_cuda(plain(_unmarked(features))))
    install_packed_attention(model, "flex")
    loss, grads = _loss_and_grads(model, to_cuda(packed(features)))
    assert loss == pytest.approx(ref_loss, rel=1e-4)      # TF32 and kernel order on the GPU
    for name_, ref in ref_grads.items():
        scale = ref.abs().max().item()
        torch.testing.assert_close(grads[name_], ref, rtol=1e-3, atol=1e-3 * scale + 1e-7)


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_plain_batches_and_generation_run_the_model_unchanged(name):
    """Validation loss and generation (no document ids) after installing: as before."""
    model, tokenizer = _tiny(name)
    model.eval()
    reference = copy.deepcopy(model)
    install_packed_attention(model)
    plain, packed = _collators(model, tokenizer)
    features = _features(model.config.vocab_size)
    batch = packed(_unmarked(features))          # unmarked features: one example per row
    assert set(batch) == set(plain(_unmarked(features)))
    labels = batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        kwargs = {"max_new_tokens": 5, "num_beams": 1, "do_sample": False}
        generated = model.generate(**inputs, **kwargs)
        assert torch.equal(generated, reference.generate(**inputs, **kwargs))
    assert labels.shape[0] == len(features)


def test_a_packed_call_between_generations_leaves_no_layout_behind():
    model, tokenizer = _tiny("barto-tiny")
    model.eval()
    install_packed_attention(model, "dense")
    _, packed = _collators(model, tokenizer)
    batch = packed(_features(model.config.vocab_size))
    batch.pop("labels")
    with torch.no_grad():
        model(**batch)
    from seq2seq_es.kernels.packed_attention import _STATE_ATTR
    assert getattr(model, _STATE_ATTR).current is None


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_lean_cross_entropy_sees_the_packed_batch(name):
    from seq2seq_es.kernels.lean_ce import install_lean_loss
    model, tokenizer = _tiny(name)
    model.eval()
    install_packed_attention(model, "dense")
    _, packed = _collators(model, tokenizer)
    batch = packed(_features(model.config.vocab_size))
    labels = batch.pop("labels")
    with torch.no_grad():
        expected = token_ce_sum(model(**batch).logits, labels)
        install_lean_loss(model, 16)
        lean = model(**batch, lean_ce_labels=labels)
    assert lean.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_packed_attention_over_a_t5_kernel_gives_the_unpacked_loss(kernel):
    """model.attention sdpa/flex first (its stacks still build their own masks), packed on top."""
    from seq2seq_es.kernels.t5_attention import apply_t5_attention
    model, tokenizer = _tiny("t5s-tiny")
    model.eval()
    plain, packed = _collators(model, tokenizer)
    features = _features(model.config.vocab_size)
    with torch.no_grad():
        reference = plain(_unmarked(features))
        ref_labels = reference.pop("labels")
        expected = token_ce_sum(model(**reference).logits, ref_labels).item()
        apply_t5_attention(model, kernel)
        install_packed_attention(model, "dense")
        batch = packed(features)
        labels = batch.pop("labels")
        assert token_ce_sum(model(**batch).logits, labels).item() == pytest.approx(expected,
                                                                                   rel=1e-5)


def test_t5_kernel_swapped_back_after_packing_is_refused_not_silently_unmasked():
    from seq2seq_es.kernels.t5_attention import apply_t5_attention
    model, tokenizer = _tiny("t5s-tiny")
    install_packed_attention(model, "dense")
    apply_t5_attention(model, "sdpa")          # replaces the attention classes again
    _, packed = _collators(model, tokenizer)
    batch = packed(_features(model.config.vocab_size))
    batch.pop("labels")
    with pytest.raises(RuntimeError, match="no longer the packed attention"):
        model(**batch)


def test_packed_attention_over_a_t5_kernel_keeps_that_kernel_for_plain_batches():
    from seq2seq_es.kernels.t5_attention import T5AttentionSdpa, apply_t5_attention
    model, tokenizer = _tiny("t5s-tiny")
    model.eval()
    apply_t5_attention(model, "sdpa")
    install_packed_attention(model, "dense")
    attention = model.encoder.block[0].layer[0].SelfAttention
    assert isinstance(attention, T5AttentionSdpa)
    uninstall_packed_attention(model)
    assert type(attention) is T5AttentionSdpa and not is_installed(model)


def test_led_and_bert2bert_are_refused_naming_train_batching():
    from transformers import (BertConfig, EncoderDecoderConfig, EncoderDecoderModel, LEDConfig,
                              LEDForConditionalGeneration)
    led = LEDForConditionalGeneration(LEDConfig(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, attention_window=4,
        max_encoder_position_embeddings=32, max_decoder_position_embeddings=32))
    bert = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=16)
    pair = EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**bert), BertConfig(**bert, is_decoder=True, add_cross_attention=True)))
    for model in (led, pair):
        with pytest.raises(ConfigError) as err:
            install_packed_attention(model)
        assert err.value.key == "train.batching"


# ------------------------------------------------------------------------------------------------
# The collator


def test_collator_builds_decoder_inputs_ids_and_positions_per_document():
    collate = PackedCollator(pad_token_id=1, decoder_start_token_id=2, rows=2, source_len=6,
                             target_len=5)
    features = [{"input_ids": [10, 11, 12], "labels": [20, 21], PACKED_FEATURE: True},
                {"input_ids": [13, 14], "labels": [22, 23, 24], PACKED_FEATURE: True},
                {"input_ids": [15, 16, 17, 18], "labels": [25], PACKED_FEATURE: True}]
    out = collate(features)
    assert out["input_ids"].tolist() == [[10, 11, 12, 13, 14, 1], [15, 16, 17, 18, 1, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]
    assert out["source_doc_ids"].tolist() == [[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]]
    assert out["source_position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    assert out["labels"].tolist() == [[20, 21, 22, 23, 24], [25, -100, -100, -100, -100]]
    # The start token at every document's start, not document 0's last label.
    assert out["decoder_input_ids"].tolist() == [[2, 20, 2, 22, 23], [2, 1, 1, 1, 1]]
    assert out["target_doc_ids"].tolist() == [[0, 0, 1, 1, 1], [0, -1, -1, -1, -1]]
    assert out["target_position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 0, 0, 0, 0]]


def test_collator_pads_missing_rows_and_refuses_features_that_need_more():
    collate = PackedCollator(1, 2, rows=3, source_len=4, target_len=4)
    one = [{"input_ids": [5, 6], "labels": [7], PACKED_FEATURE: True}]
    out = collate(one)
    assert out["input_ids"].shape == (3, 4) and (out["source_doc_ids"][1:] == -1).all()
    big = [{"input_ids": [5, 6, 7], "labels": [7], PACKED_FEATURE: True}] * 4
    with pytest.raises(ValueError, match="more than the 3"):
        collate(big)
    with pytest.raises(DataError):
        collate([{"input_ids": [5] * 5, "labels": [7], PACKED_FEATURE: True}])


def test_masks_keep_documents_apart():
    layout = PackedLayout(torch.tensor([[0, 0, 1, -1]]), torch.tensor([[0, 1, 1, -1]]),
                          torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    enc = layout.dense_mask("encoder", torch.device("cpu"))[0, 0].int().tolist()
    dec = layout.dense_mask("decoder", torch.device("cpu"))[0, 0].int().tolist()
    cross = layout.dense_mask("cross", torch.device("cpu"))[0, 0].int().tolist()
    assert enc == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert dec == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    # target doc 0 -> source doc 0, target doc 1 -> source doc 1, padding -> key 0 only.
    assert cross == [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]


# ------------------------------------------------------------------------------------------------
# The plan


def _random_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 97, n), rng.integers(1, 41, n)


def _check_epoch(plan: PackedPlan, src, tgt, epoch: int) -> list[int]:
    seen = []
    for step in range(plan.steps_per_epoch):
        for rank in range(plan.world_size):
            batches = plan.micro_batches(epoch, step, rank)
            assert len(batches) == plan.grad_accum                  # equal counts per rank
            for batch in batches:
                assert len(plan.micro_batch_rows(epoch, step, rank)[0]) == plan.rows
                # The collator's next-fit re-forms at most `rows` rows.
                assert len(next_fit_rows(src[batch], tgt[batch], plan.source_len,
                                         plan.target_len)) <= plan.rows
                seen += batch
    return seen


@pytest.mark.parametrize("rows, grad_accum, world_size", [(4, 1, 1), (3, 2, 2), (2, 3, 1)])
def test_plan_covers_every_example_once_per_epoch(rows, grad_accum, world_size):
    src, tgt = _random_lengths(500)
    plan = PackedPlan(src, tgt, rows, 96, 40, grad_accum, world_size, seed=3)
    assert plan.dropped_per_epoch == 0                 # rows were split to complete the last step
    assert plan.num_rows < len(src) * 0.7              # packing put several examples per row
    for epoch in range(2):
        seen = _check_epoch(plan, src, tgt, epoch)
        assert sorted(seen) == list(range(len(src)))
    assert plan.epoch_batches(0) != plan.epoch_batches(1)
    # the rows come in another order each epoch, not only equally long examples swapped
    def rows_in_order(epoch):
        return [tuple(sorted((int(src[i]), int(tgt[i])) for i in row))
                for step in range(plan.steps_per_epoch) for rank in range(world_size)
                for micro in plan.micro_batch_rows(epoch, step, rank) for row in micro]
    assert rows_in_order(0) != rows_in_order(1)
    assert sorted(rows_in_order(0)) == sorted(rows_in_order(1))   # the same rows


def test_plan_drops_a_constant_count_when_rows_cannot_be_split():
    # Every example fills a row: nothing to split, the incomplete last step is dropped.
    src, tgt = np.full(10, 90), np.full(10, 5)
    plan = PackedPlan(src, tgt, 2, 96, 40, 2, 1, seed=0)
    assert plan.steps_per_epoch == 2 and plan.dropped_per_epoch == 2
    left_out = set()
    for epoch in range(4):
        seen = _check_epoch(plan, src, tgt, epoch)
        assert len(seen) == len(set(seen)) == 8
        left_out |= set(range(10)) - set(seen)
    assert len(left_out) > 2                            # different examples each epoch


def test_the_dropped_count_is_the_examples_of_the_rows_left_out():
    # 11 examples in 7 rows; a step takes 6, and no row split completes a second: one row of two
    # examples is left out. Counted as one example (a row), the epoch's line under-reported it.
    src = np.array([10, 50, 30, 30, 30, 10, 50, 30, 10, 50, 50])
    tgt = np.array([38, 5, 5, 20, 10, 38, 20, 5, 38, 10, 20])
    plan = PackedPlan(src, tgt, 2, 96, 40, 3, 1, seed=0)
    assert (plan.num_rows, plan.steps_per_epoch, plan.dropped_per_epoch) == (7, 1, 2)
    for epoch in range(3):
        seen = _check_epoch(plan, src, tgt, epoch)
        assert len(seen) == len(set(seen)) == len(src) - plan.dropped_per_epoch


def test_plan_is_a_pure_function_and_resumes_exactly():
    src, tgt = _random_lengths(300, seed=5)
    a = PackedPlan(src, tgt, 3, 96, 40, 2, 2, seed=7)
    b = PackedPlan(src.tolist(), tgt.tolist(), 3, 96, 40, 2, 2, seed=7)
    assert a.epoch_batches(1) == b.epoch_batches(1)
    assert a.epoch_batches(0) != PackedPlan(src, tgt, 3, 96, 40, 2, 2, seed=8).epoch_batches(0)
    for rank in range(2):
        straight = a.iter_steps(0, 0, rank)
        run = [next(straight) for _ in range(a.steps_per_epoch + 3)]
        resumed = b.iter_steps(0, 4, rank)
        assert [next(resumed) for _ in range(len(run) - 4)] == run[4:]


def test_plan_refuses_examples_longer_than_a_row_and_too_little_data():
    with pytest.raises(DataError, match="data.max_source_length"):
        PackedPlan([5, 100], [3, 3], 2, 96, 40, 1, 1, 0)
    with pytest.raises(DataError, match="source token"):
        PackedPlan([0, 5], [3, 3], 2, 96, 40, 1, 1, 0)
    with pytest.raises(ConfigError) as err:
        PackedPlan([5, 5], [3, 3], 2, 96, 40, 4, 1, 0)
    assert err.value.key == "train.batch_size"


def test_layout_fits_every_row_and_keeps_every_example():
    src, tgt = _random_lengths(2000, seed=2)
    rows = layout_rows(src, tgt, 96, 40, window=16)
    assert sorted(i for row in rows for i in row) == list(range(2000))
    assert all(src[row].sum() <= 96 and tgt[row].sum() <= 40 for row in rows)


# ------------------------------------------------------------------------------------------------
# Wiring and a real run


def test_builders_wire_packed_batching(tmp_path):
    from datasets import Dataset

    from seq2seq_es.config import compose
    from seq2seq_es.engine import distributed as D
    from seq2seq_es.engine.builders import SplitData, get_collator, get_model, get_step_plan

    cfg = compose(task="mlsum", model="barto-tiny", overrides={
        "train.batching": "packed", "train.batch_size": 2, "data.max_source_length": 16,
        "data.max_target_length": 12, "train.max_steps": 3, "optim.warmup_steps": 1})
    model, tokenizer, spec = get_model(cfg)
    assert is_installed(model)
    collator = get_collator(cfg, spec, tokenizer, model)
    assert isinstance(collator, PackedCollator) and collator.rows == 2
    tokenized = Dataset.from_list(_unmarked(_features(model.config.vocab_size)))
    train = SplitData(None, tokenized, None)
    env = D.DistEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=0,
                    launcher="none")
    plan, total = get_step_plan(cfg, env, train, 1, collator=collator)
    assert isinstance(plan, PackedPlan) and total == 3
    assert PACKED_FEATURE in train.tokenized.column_names    # the trainer's features get packed
    batch = collator([train.tokenized[i] for i in plan.micro_batches(0, 0, 0)[0]])
    assert "target_doc_ids" in batch
    # evaluate / predict load the model without the packed attention: plain collator.
    plain_model, _, _ = get_model(compose(task="mlsum", model="barto-tiny"))
    assert type(get_collator(cfg, spec, tokenizer, plain_model)) is Seq2SeqCollator


@pytest.mark.slow
@pytest.mark.parametrize("model, launcher, ranks", [("barto-tiny", "none", 1),
                                                    ("t5s-tiny", "none", 1),
                                                    ("barto-tiny", "torchrun", 2)])
def test_a_short_real_run_trains_with_packed_batches(tmp_path, model, launcher, ranks):
    import re

    from engine_runs import base_args, demo_files, run, step_losses

    files = demo_files(tmp_path / "data", train_size=48)
    out = tmp_path / "run"
    proc = run(launcher, ranks, base_args(files, out, model=model, steps=6, extra=[
        "--train.batching", "packed", "--data.max_source_length", "384",
        "--data.max_target_length", "96", "--train.grad_accum", "2"]))
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 7))
    assert all(np.isfinite(v) for v in losses.values())
    assert losses[6] < losses[1]
    found = re.search(r"packed batches: 48 examples in (\d+) rows", proc.stdout + proc.stderr)
    assert found and int(found.group(1)) < 48            # several examples per row


def test_plan_splits_rows_again_and_again_to_fill_a_step():
    # Ten short examples fit one row; a step takes eight rows: the row is split seven times.
    plan = PackedPlan([3] * 10, [2] * 10, 4, 96, 40, 2, 1, seed=0)
    assert plan.num_rows == 8 and plan.steps_per_epoch == 1 and plan.dropped_per_epoch == 0
    assert sorted(_check_epoch(plan, np.full(10, 3), np.full(10, 2), 0)) == list(range(10))


def test_a_plan_that_pads_more_than_one_example_per_row_says_so():
    # Examples close to the row length cannot share rows: packing only adds padding.
    rng = random.Random(0)
    long = PackedPlan([rng.randint(60, 96) for _ in range(400)],
                      [rng.randint(20, 40) for _ in range(400)], 4, 96, 40, 2, 1, seed=0)
    [*_, warning] = long.summary()
    assert warning.startswith("warning: packing pads more here than one example per row would")
    assert "rows of 96 + 40 tokens" in warning and "train.batching fixed or bucketed" in warning
    short = PackedPlan([rng.randint(5, 30) for _ in range(400)],
                       [rng.randint(3, 12) for _ in range(400)], 4, 96, 40, 2, 1, seed=0)
    assert short.packed_padding(0) < short.unpacked_padding(0)
    assert not any(line.startswith("warning") for line in short.summary())
