"""Guards found by a mutation audit of seq2seq_es/data/: each test fails under a plausible bug in
the data pipeline that the rest of the suite let through (a cache reused for other inputs, a
target cut from the wrong side, an example left out of every epoch, ...). Every expected value is
computed here, plainly, from the inputs: never from the code under test."""

from __future__ import annotations

import numpy as np
import pytest

from seq2seq_es.data.collator import LABEL_PAD, Seq2SeqCollator
from seq2seq_es.data.tokenize import tokenize_examples, truncate_ids

# ------------------------------------------------------------------------------------------------
# data/tokenize.py

_TOKENIZERS: dict = {}


def _tokenizer(name: str = "barto-tiny"):
    if name not in _TOKENIZERS:
        from seq2seq_es.models import load_tokenizer
        from seq2seq_es.models.tiny import ensure_tiny_checkpoint

        _TOKENIZERS[name] = load_tokenizer(str(ensure_tiny_checkpoint(name)))
    return _TOKENIZERS[name]


def _examples(sources, targets):
    import datasets

    return datasets.Dataset.from_dict({"source": list(sources), "target": list(targets)})


LONG = "uno dos tres cuatro cinco seis siete ocho nueve diez once doce"


def test_truncation_keeps_every_token_of_a_tokenizer_with_no_trailing_special():
    # Bug guarded: `ids[-trail:]` / `ids[lead:-trail]` with trail == 0 (a tokenizer that adds
    # only a leading <s>, or none): the whole text became the "tail", or the body vanished.
    ids = [0, 10, 11, 12, 13, 14]
    assert truncate_ids(ids, 4, lead=1, trail=0, side="right") == [0, 10, 11, 12]
    assert truncate_ids(ids, 4, lead=1, trail=0, side="left") == [0, 12, 13, 14]
    assert truncate_ids([10, 11, 12, 13], 2, lead=0, trail=0, side="right") == [10, 11]
    assert truncate_ids([10, 11, 12, 13], 2, lead=0, trail=0, side="left") == [12, 13]


def test_targets_are_cut_from_the_right_even_when_sources_are_cut_from_the_left(tmp_path):
    # Bug guarded: the labels truncated with the source's side: a dialogue run (left
    # truncation) trained on the end of every long reply instead of its beginning.
    tok = _tokenizer()
    full = tok(text_target=LONG)["input_ids"]
    assert len(full) > 6 and full[0] == tok.bos_token_id and full[-1] == tok.eos_token_id
    tokenized, report = tokenize_examples(
        _examples(["hola"], [LONG]), tok, split="train", max_source_length=16,
        max_target_length=6, source_truncation_side="left", cache_dir=str(tmp_path))
    assert tokenized["labels"][0] == full[:5] + [tok.eos_token_id]   # <s>, first 4, </s>
    assert report.targets_truncated == 1 and report.target_lengths_max == len(full)



@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_labels_end_with_the_end_of_sequence_token(tmp_path, name):
    # Bug guarded: labels tokenized without the special tokens: no </s> to learn, so the model
    # never learns to stop (generation runs to max_new_tokens).
    tok = _tokenizer(name)
    tokenized, _ = tokenize_examples(_examples(["hola"], ["uno dos tres"]), tok, split="train",
                                     max_source_length=16, max_target_length=16,
                                     cache_dir=str(tmp_path))
    body = tok("uno dos tres", add_special_tokens=False)["input_ids"]
    labels = tokenized["labels"][0]
    assert labels[-1] == tok.eos_token_id and labels[-1 - len(body):-1] == body

@pytest.mark.parametrize("changed", ["max_source_length", "max_target_length"])
def test_another_length_limit_does_not_reuse_the_cached_tokenization(tmp_path, changed):
    # Bug guarded: a length limit missing from the cache key: a run with a larger limit trained
    # on the ids a shorter limit had cut (and cached) in the same cache folder.
    tok = _tokenizer()
    full_src, full_tgt = tok(LONG)["input_ids"], tok(text_target=LONG)["input_ids"]
    examples = _examples([LONG], [LONG])
    limits = {"max_source_length": 6, "max_target_length": 6}
    short, _ = tokenize_examples(examples, tok, split="train", cache_dir=str(tmp_path), **limits)
    assert len(short["input_ids"][0]) == 6 and len(short["labels"][0]) == 6
    limits[changed] = 64
    longer, _ = tokenize_examples(examples, tok, split="train", cache_dir=str(tmp_path), **limits)
    if changed == "max_source_length":
        assert longer["input_ids"][0] == full_src
    else:
        assert longer["labels"][0] == full_tgt


@pytest.mark.parametrize("first, second", [
    ((["uno dos tres"], ["cinco"]), (["uno dos tres"], ["cuatro"])),   # another target text
    ((["uno"], ["dos"]), (["un"], ["odos"])),                          # same characters in all
])
def test_other_examples_do_not_reuse_the_cached_tokenization(tmp_path, first, second):
    # Bug guarded: the examples' text missing from the cache key (a new train file trained on the
    # previous file's ids), or hashed with no separator between source and target, so that
    # ("uno", "dos") and ("un", "odos") shared a key.
    tok = _tokenizer()
    for sources, targets in (first, second):
        got, _ = tokenize_examples(_examples(sources, targets), tok, split="train",
                                   max_source_length=32, max_target_length=32,
                                   cache_dir=str(tmp_path))
        assert got["input_ids"][0] == tok(sources[0])["input_ids"]
        assert got["labels"][0] == tok(text_target=targets[0])["input_ids"]


def test_a_bert_targets_leading_cls_is_dropped_from_its_labels_and_keyed_in_the_cache(tmp_path):
    # Bugs guarded: (1) BERT's [CLS] kept at the front of every label, though the decoder is fed
    # it by the shift (the model learns to echo it); (2) whether it is dropped missing from the
    # cache key: a model with another decoder start token reused the labels cut for this one.
    tok = _tokenizer("betoshare-tiny")
    cls = tok.cls_token_id
    full = tok(text_target="uno dos tres")["input_ids"]
    assert full[0] == cls and full[-1] == tok.sep_token_id
    examples = _examples(["hola"], ["uno dos tres"])
    dropped, _ = tokenize_examples(examples, tok, split="train", max_source_length=16,
                                   max_target_length=16, drop_leading_label_id=cls,
                                   cache_dir=str(tmp_path))
    assert dropped["labels"][0] == full[1:]
    kept, _ = tokenize_examples(examples, tok, split="train", max_source_length=16,
                                max_target_length=16, drop_leading_label_id=None,
                                cache_dir=str(tmp_path))
    assert kept["labels"][0] == full


def test_a_target_of_exactly_max_target_length_tokens_is_not_counted_as_truncated(tmp_path):
    # Bug guarded: `>=` in the report's target count: targets that fit were said to be cut (a
    # user raises data.max_target_length, and pays for it, for nothing).
    tok = _tokenizer()
    exact = tok(text_target="uno dos tres")["input_ids"]
    examples = _examples(["hola", "hola"], ["uno dos tres", LONG])
    _, report = tokenize_examples(examples, tok, split="train", max_source_length=16,
                                  max_target_length=len(exact), cache_dir=str(tmp_path))
    assert report.targets_truncated == 1


# ------------------------------------------------------------------------------------------------
# data/packing.py


def _packed_rows(plan, epoch: int) -> list[frozenset[int]]:
    """Every row of the epoch's steps, as a set of example indices (all ranks)."""
    return [frozenset(row) for step in range(plan.steps_per_epoch)
            for rank in range(plan.world_size)
            for micro in plan.micro_batch_rows(epoch, step, rank) for row in micro]


def test_packed_rows_are_split_when_exactly_enough_examples_can_be_split_off():
    # Bug guarded: `>` for `>=` when deciding to split rows: with exactly as many examples to
    # split off as rows missing, a whole step's rows were left out of every epoch instead.
    from seq2seq_es.data.packing import PackedPlan

    # Six examples fill a row alone; two of 40 source tokens share one: 7 rows, a step takes 4.
    src, tgt = [90] * 6 + [40, 40], [5] * 8
    plan = PackedPlan(src, tgt, rows=2, source_len=96, target_len=40, grad_accum=2,
                      world_size=1, seed=0)
    assert plan.steps_per_epoch == 2 and plan.dropped_per_epoch == 0
    for epoch in range(2):
        seen = [i for row in _packed_rows(plan, epoch) for i in row]
        assert sorted(seen) == list(range(8))


def test_packed_rows_left_out_change_with_the_epoch_for_distinct_lengths():
    # Bug guarded: the rows left out of an incomplete last step taken in layout order rather than
    # the epoch's shuffled order: the same examples (distinct lengths, so no swap hides it) were
    # never trained on.
    from seq2seq_es.data.packing import PackedPlan

    src, tgt = list(range(60, 70)), [5] * 10      # no two share a row: 10 rows, steps of 4
    plan = PackedPlan(src, tgt, rows=2, source_len=96, target_len=40, grad_accum=2,
                      world_size=1, seed=0)
    assert plan.steps_per_epoch == 2 and plan.dropped_per_epoch == 2
    left_out = set()
    for epoch in range(6):
        seen = [i for row in _packed_rows(plan, epoch) for i in row]
        assert len(seen) == len(set(seen)) == 8
        left_out |= set(range(10)) - set(seen)
    assert len(left_out) > 4



def test_packed_epochs_leave_out_the_counted_number_of_examples_every_epoch():
    # Bug guarded: the rows to leave out put first in the epoch's order rather than last: they
    # trained, and random rows (of two examples as often as one) were cut instead, so an epoch
    # left out another number of examples than the one logged.
    from seq2seq_es.data.packing import PackedPlan

    # Seven examples alone in a row, two rows of two: 9 rows, steps of 4, too few to split.
    src, tgt = [90] * 7 + [40] * 4, [5] * 11
    plan = PackedPlan(src, tgt, rows=2, source_len=96, target_len=40, grad_accum=2,
                      world_size=1, seed=0)
    assert plan.steps_per_epoch == 2 and plan.dropped_per_epoch == 1   # one single-example row
    for epoch in range(12):
        seen = [i for row in _packed_rows(plan, epoch) for i in row]
        assert len(seen) == len(set(seen)) == 10, epoch

def test_equally_long_examples_share_packed_rows_with_other_partners_each_epoch():
    # Bug guarded: the per-epoch swap of equally long examples not drawn (or drawn with the same
    # seed every epoch): the same examples were packed together in every epoch.
    from seq2seq_es.data.packing import PackedPlan

    src, tgt = [20] * 24, [8] * 24                # four per row of 96 + 40: six rows
    plan = PackedPlan(src, tgt, rows=1, source_len=96, target_len=40, grad_accum=2,
                      world_size=1, seed=0)
    rows = [set(_packed_rows(plan, epoch)) for epoch in range(3)]
    for epoch_rows in rows:
        assert sorted(i for row in epoch_rows for i in row) == list(range(24))
    assert rows[0] != rows[1] and rows[1] != rows[2]


def test_examples_that_exactly_fill_a_packed_row_share_it():
    # Bug guarded: `>` for `>=` in the layout's fit test: two halves of a row each opened a row
    # of their own (twice the rows, steps and padding).
    from seq2seq_es.data.packing import PackedPlan, layout_rows

    src, tgt = np.full(8, 48), np.full(8, 20)
    rows = layout_rows(src, tgt, 96, 40)
    assert sorted(len(row) for row in rows) == [2, 2, 2, 2]
    plan = PackedPlan(src, tgt, rows=2, source_len=96, target_len=40, grad_accum=1,
                      world_size=1, seed=0)
    assert plan.num_rows == 4 and plan.steps_per_epoch == 2


# ------------------------------------------------------------------------------------------------
# data/length_buckets.py


def test_bucketed_micro_batches_hold_other_examples_each_epoch():
    # Bug guarded: the examples of a bucket pair not shuffled per epoch (or shuffled with the
    # same seed every epoch): the same examples shared a micro-batch, and the same ones were
    # handed on or left out, in every epoch; only the step order changed.
    from seq2seq_es.data.length_buckets import BucketedPlan

    rng = np.random.default_rng(0)
    src, tgt = rng.integers(4, 61, 400).tolist(), rng.integers(3, 41, 400).tolist()
    plan = BucketedPlan(src, tgt, max_tokens=512, grad_accum=1, world_size=2, seed=1,
                        max_shapes=4)
    compositions = []
    for epoch in range(2):
        batches = [frozenset(b) for step in range(plan.steps_per_epoch)
                   for rank in range(2) for b in plan.micro_batches(epoch, step, rank)]
        seen = [i for b in batches for i in b]
        assert len(seen) == len(set(seen)) == len(src) - plan.dropped_per_epoch
        compositions.append(set(batches))
    assert len(compositions[0] & compositions[1]) < len(compositions[0]) // 2


def test_bucketed_surplus_micro_batches_are_left_out_of_the_largest_pair():
    # Bug guarded: the micro-batches that do not fill a step taken from the first pair with any
    # left instead of the pair with the most: here every short example (a whole length range)
    # was left out of every epoch instead of 12 of the 40 long ones.
    from seq2seq_es.data.length_buckets import BucketedPlan

    src = [8] * 32 + [64] * 40
    tgt = [8] * 32 + [64] * 40
    plan = BucketedPlan(src, tgt, max_tokens=256, grad_accum=8, world_size=1, seed=0,
                        max_shapes=4)
    # (8, 8) holds 256 // 16 = 16 rows: 2 micro-batches; (64, 64) 2 rows: 20. 22 = 2 x 8 + 6.
    assert plan.steps_per_epoch == 2 and plan.dropped_per_epoch == 6 * 2
    for epoch in range(2):
        seen = [i for step in range(2) for b in plan.micro_batches(epoch, step, 0) for i in b]
        assert len(seen) == len(set(seen)) == 72 - 12
        assert set(range(32)) <= set(seen)                 # every short example trains


# ------------------------------------------------------------------------------------------------
# data/token_budget.py


def test_token_budget_fills_the_last_step_by_halving_the_fullest_micro_batch():
    # Bug guarded: the smallest splittable micro-batch halved instead of the fullest: a step of
    # micro-batches of 4 and 1 examples (ranks far apart) where 2 and 2 were meant.
    from seq2seq_es.data.token_budget import TokenBudgetPlan

    # Seven equal examples of 20 tokens under 80: micro-batches of 4 and 3; a step takes 3.
    plan = TokenBudgetPlan([10] * 7, [10] * 7, max_tokens=80, grad_accum=3, world_size=1,
                           seed=0)
    sizes = sorted(len(b) for b in plan.micro_batches(0, 0, 0))
    assert sizes == [2, 2, 3]


def test_an_example_that_costs_exactly_the_budget_is_not_reported_oversize():
    # Bug guarded: `>=` in the oversize test: an example of exactly max_tokens padded tokens was
    # said to exceed train.max_tokens (and the user told to raise it).
    from seq2seq_es.data.token_budget import TokenBudgetPlan

    plan = TokenBudgetPlan([60, 10, 10], [40, 10, 10], max_tokens=100, grad_accum=1,
                           world_size=1, seed=0)
    assert plan.oversize_examples == []
    assert not any(line.startswith("note:") for line in plan.summary())
    over = TokenBudgetPlan([61, 10, 10], [40, 10, 10], max_tokens=100, grad_accum=1,
                           world_size=1, seed=0)
    assert over.oversize_examples == [0]


# ------------------------------------------------------------------------------------------------
# data/collator.py


def test_collated_example_indices_stay_in_row_order():
    # Bug guarded: example_index reordered (sorted) apart from the rows: a prediction or loss
    # read back by it is attributed to another example.
    collate = Seq2SeqCollator(pad_token_id=1, decoder_start_token_id=2)
    batch = collate([{"input_ids": [5, 6], "labels": [7], "example_index": 9},
                     {"input_ids": [5], "labels": [8, 9], "example_index": 3}])
    assert batch["example_index"].tolist() == [9, 3]
    assert batch["labels"].tolist() == [[7, LABEL_PAD], [8, 9]]
