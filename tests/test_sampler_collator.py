"""The step plan (data order) and the collator, without models."""

import torch

from seq2seq_es.data.collator import LABEL_PAD, Seq2SeqCollator
from seq2seq_es.data.sampler import StepPlan, eval_batches
from seq2seq_es.data.tokenize import truncate_ids


def step_sets(plan: StepPlan, steps: int) -> list[set[int]]:
    """The set of example indices behind each of the first `steps` optimizer steps."""
    per_rank = [plan.iter_steps(0, 0, r) for r in range(plan.world_size)]
    out = []
    for _ in range(steps):
        indices = set()
        for it in per_rank:
            _, _, micro = next(it)
            for mb in micro:
                assert len(mb) == plan.batch_size
                indices.update(mb)
        out.append(indices)
    return out


def test_a_step_covers_the_same_examples_however_it_is_split():
    splits = [dict(batch_size=2, grad_accum=4, world_size=1),
              dict(batch_size=4, grad_accum=1, world_size=2),
              dict(batch_size=8, grad_accum=1, world_size=1)]
    sets = [step_sets(StepPlan(50, seed=7, **s), 6) for s in splits]
    assert sets[0] == sets[1] == sets[2]
    for step in sets[0]:
        assert len(step) == 8


def test_every_example_once_per_epoch_and_order_changes_between_epochs():
    plan = StepPlan(40, batch_size=4, grad_accum=1, world_size=2, seed=1)
    assert plan.steps_per_epoch == 5 and plan.dropped_per_epoch == 0
    sets = step_sets(plan, 10)
    first, second = sets[:5], sets[5:]
    assert set().union(*first) == set(range(40))
    assert set().union(*second) == set(range(40))
    assert first != second


def test_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    plan = StepPlan(37, batch_size=3, grad_accum=2, world_size=2, seed=3)
    full = plan.iter_steps(0, 0, rank=1)
    seen = [next(full) for _ in range(9)]  # crosses an epoch boundary (6 steps per epoch)
    epoch, step_in_epoch, _ = seen[3]
    resumed = plan.iter_steps(epoch, step_in_epoch, rank=1)
    assert [next(resumed) for _ in range(6)] == seen[3:9]
    assert StepPlan(37, 3, 2, 2, seed=4).epoch_order(0).tolist() != plan.epoch_order(0).tolist()


def test_eval_batches_cover_every_example_once_and_are_the_one_process_batches():
    for n, batch_size, world in [(10, 3, 3), (2, 2, 4), (9, 1, 3), (1, 4, 2), (23, 4, 2), (0, 2, 2)]:
        order = list(range(n))[::-1]  # any order (predict sorts by length)
        single = eval_batches(order, batch_size, 0, 1)
        per_rank = [eval_batches(order, batch_size, r, world) for r in range(world)]
        assert len({len(batches) for batches in per_rank}) == 1  # the same number of calls
        real = [batch for batches in per_rank for batch in batches if batch != [-1]]
        # The ranks hold the one-process batches, whole: the same examples side by side.
        assert sorted(real) == sorted(single) and all(-1 not in batch for batch in real)
        assert sorted(i for batch in real for i in batch) == list(range(n))


def test_truncate_keeps_special_frame_on_either_side():
    ids = [0, 10, 11, 12, 13, 14, 2]
    assert truncate_ids(ids, 5, lead=1, trail=1, side="right") == [0, 10, 11, 12, 2]
    assert truncate_ids(ids, 5, lead=1, trail=1, side="left") == [0, 12, 13, 14, 2]
    assert truncate_ids(ids, 10, lead=1, trail=1, side="right") == ids
    assert truncate_ids([5, 6, 7, 1], 3, lead=0, trail=1, side="right") == [5, 6, 1]


def test_collator_pads_masks_labels_and_shifts_decoder_inputs():
    collate = Seq2SeqCollator(pad_token_id=1, decoder_start_token_id=2)
    batch = collate([{"input_ids": [0, 5, 6, 2], "labels": [0, 7, 2]},
                     {"input_ids": [0, 5, 2], "labels": [0, 8, 9, 10, 2]}])
    assert batch["input_ids"].tolist() == [[0, 5, 6, 2], [0, 5, 2, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[0, 7, 2, LABEL_PAD, LABEL_PAD], [0, 8, 9, 10, 2]]
    assert batch["decoder_input_ids"].tolist() == [[2, 0, 7, 2, 1], [2, 0, 8, 9, 10]]
    assert "global_attention_mask" not in batch


def test_led_collator_pads_to_window_and_marks_global_tokens():
    first = Seq2SeqCollator(1, 2, pad_to_multiple_of=8, global_attention="first")
    batch = first([{"input_ids": [0, 5, 6, 2], "labels": [0, 2]},
                   {"input_ids": [0, 5, 6, 7, 8, 9, 10, 11, 12, 2], "labels": [0, 2]}])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["global_attention_mask"][:, 0].tolist() == [1, 1]
    assert int(batch["global_attention_mask"].sum()) == 2
    prefix = Seq2SeqCollator(1, 2, pad_to_multiple_of=4, global_attention="prefix:3")
    b = prefix([{"input_ids": [0, 5], "labels": [2]}, {"input_ids": [0, 5, 6, 7, 2], "labels": [2]}])
    # Padding never becomes global.
    assert b["global_attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0, 0, 0],
                                                   [1, 1, 1, 0, 0, 0, 0, 0]]
    sentences = Seq2SeqCollator(1, 2, global_attention="sentences",
                                sentence_end_ids=frozenset({4}))
    s = sentences([{"input_ids": [0, 5, 4, 6, 7, 4, 8, 2], "labels": [2]}])
    assert s["global_attention_mask"].tolist() == [[1, 0, 0, 1, 0, 0, 1, 0]]
    assert torch.equal(s["attention_mask"], torch.ones(1, 8, dtype=torch.long))


def test_the_plan_says_how_large_a_step_is_and_what_an_epoch_leaves_out():
    # train.batch_size is per rank: 4 ranks make the step 4 times larger, which the run states.
    plan = StepPlan(num_examples=70, batch_size=4, grad_accum=2, world_size=4, seed=0)
    assert plan.summary() == [
        "batches: 4 examples per rank x 2 accumulated x 4 rank(s) = 32 per step, 2 steps per "
        "epoch",
        "6 training examples per epoch do not fill a last step and are left out of that epoch "
        "(the order changes each epoch)"]


def test_the_batch_summary_counts_one_step_in_the_singular():
    from seq2seq_es.data.sampler import StepPlan

    assert StepPlan(16, 4, 2, 2, 0).summary() == [
        "batches: 4 examples per rank x 2 accumulated x 2 rank(s) = 16 per step, "
        "1 step per epoch"]
    assert StepPlan(32, 4, 2, 2, 0).summary()[0].endswith(", 2 steps per epoch")
