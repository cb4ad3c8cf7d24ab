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
    seen = [next(full) for _ in range(9)]  # three epochs (3 steps per epoch: 37 // 12)
    epoch, step_in_epoch, _ = seen[4]
    assert (epoch, step_in_epoch) == (1, 1)  # mid-epoch, then across the next boundary
    resumed = plan.iter_steps(epoch, step_in_epoch, rank=1)
    assert [next(resumed) for _ in range(5)] == seen[4:9]
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


def test_a_run_resumed_mid_epoch_starts_the_next_epoch_at_its_first_step():
    # A resume at step 3 of an epoch must not skip steps 0-2 of every later epoch too (their
    # examples would never be trained again).
    plan = StepPlan(32, batch_size=2, grad_accum=2, world_size=1, seed=0)
    assert plan.steps_per_epoch == 8
    resumed = plan.iter_steps(0, 3, rank=0)
    got = [next(resumed) for _ in range(13)]
    expected = [(0, s) for s in range(3, 8)] + [(1, s) for s in range(8)]
    assert [(epoch, step) for epoch, step, _ in got] == expected
    assert [micro for _, _, micro in got] == [plan.micro_batches(e, s, 0) for e, s in expected]


def _barto_tokenizer():
    from seq2seq_es.models import load_tokenizer
    from seq2seq_es.models.tiny import ensure_tiny_checkpoint

    return load_tokenizer(str(ensure_tiny_checkpoint("barto-tiny")))


def test_changing_the_truncation_side_does_not_reuse_the_cached_tokenization(tmp_path):
    # The cache key must hold source_truncation_side: otherwise a dialogue run switched to
    # left truncation silently trains on the right-truncated (oldest-turns) sources it cached.
    import datasets

    from seq2seq_es.data.tokenize import tokenize_examples

    tokenizer = _barto_tokenizer()
    source = "uno dos tres cuatro cinco seis siete ocho nueve diez"
    full = tokenizer(source)["input_ids"]
    assert len(full) > 8
    examples = datasets.Dataset.from_dict({"source": [source], "target": ["uno"]})
    kept = {}
    for side in ("right", "left"):
        tokenized, report = tokenize_examples(
            examples, tokenizer, split="train", max_source_length=6, max_target_length=8,
            source_truncation_side=side, cache_dir=str(tmp_path))
        kept[side] = tokenized["input_ids"][0]
        assert report.sources_truncated == 1
    assert kept["right"] == full[:5] + full[-1:]     # <s>, the first 4 tokens, </s>
    assert kept["left"] == full[:1] + full[-5:]      # <s>, the last 4 tokens, </s>


def test_a_source_of_exactly_max_source_length_tokens_is_not_counted_as_truncated(tmp_path):
    # The truncation report must not claim that sources which fit were cut (a user would
    # raise data.max_source_length for nothing).
    import datasets

    from seq2seq_es.data.tokenize import tokenize_examples

    tokenizer = _barto_tokenizer()
    source = "uno dos tres cuatro cinco"
    full = tokenizer(source)["input_ids"]
    examples = datasets.Dataset.from_dict({"source": [source], "target": ["uno"]})
    tokenized, report = tokenize_examples(
        examples, tokenizer, split="train", max_source_length=len(full), max_target_length=8,
        cache_dir=str(tmp_path / "exact"))
    assert tokenized["input_ids"][0] == full
    assert report.sources_truncated == 0
    _, shorter = tokenize_examples(
        examples, tokenizer, split="train", max_source_length=len(full) - 1,
        max_target_length=8, cache_dir=str(tmp_path / "shorter"))
    assert shorter.sources_truncated == 1


def test_padding_to_a_multiple_leaves_a_multiple_as_it_is():
    # LED pads sources to its attention window: a source already a multiple long grew by a
    # whole window (twice the attention work for nothing).
    collate = Seq2SeqCollator(pad_token_id=1, decoder_start_token_id=2, pad_to_multiple_of=8)
    batch = collate([{"input_ids": list(range(3, 11)), "labels": [5, 2]}])
    assert batch["input_ids"].shape == (1, 8)
    assert batch["attention_mask"].tolist() == [[1] * 8]
    assert [collate.source_length(n) for n in (1, 7, 8, 9, 16, 17)] == [8, 8, 8, 16, 16, 24]


def test_truncation_report_median_of_an_even_count_is_the_mean_of_the_middle_two(tmp_path):
    # The report took the upper middle value: for two sources of 4 and 12 tokens it said
    # "median 12", where every statistics tool a user checks against says 8.
    import datasets

    from seq2seq_es.data.tokenize import tokenize_examples

    tokenizer = _barto_tokenizer()
    sources = ["uno dos", "uno dos tres cuatro cinco seis siete ocho nueve diez"]
    lengths = [len(tokenizer(s)["input_ids"]) for s in sources]
    examples = datasets.Dataset.from_dict({"source": sources, "target": ["uno", "uno dos"]})
    _, report = tokenize_examples(examples, tokenizer, split="train", max_source_length=64,
                                  max_target_length=8, cache_dir=str(tmp_path))
    assert report.source_lengths_p50 == sum(lengths) / 2
    assert f"median {sum(lengths) / 2:g}, max {max(lengths)};" in report.summary()


def test_a_tokenizer_that_differs_beyond_its_vocabulary_does_not_reuse_the_cached_ids(tmp_path):
    # The key held the vocabulary and one probe sentence: a tokenizer with other merges or
    # another normalizer and the same vocabulary trained on the ids another one had cached (a
    # concurrency audit: 111 tokens a row where its own tokenizer gave 211).
    import copy
    import json

    import datasets
    from tokenizers import Tokenizer

    from seq2seq_es.data.tokenize import tokenize_examples

    tokenizer = _barto_tokenizer()
    pipeline = json.loads(tokenizer.backend_tokenizer.to_str())
    assert pipeline["normalizer"] is None
    # "x" read as "j": the same vocabulary, and the probe sentence has no "x"
    pipeline["normalizer"] = {"type": "Replace", "pattern": {"String": "x"}, "content": "j"}
    other = copy.deepcopy(tokenizer)
    other._tokenizer = Tokenizer.from_str(json.dumps(pipeline))
    assert other.get_vocab() == tokenizer.get_vocab()
    source = "un examen exacto en Texas"
    assert other(source)["input_ids"] != tokenizer(source)["input_ids"]
    examples = datasets.Dataset.from_dict({"source": [source], "target": ["examen"]})
    # a call with truncation or padding leaves them on the backend: no other ids, no other key
    from seq2seq_es.data.tokenize import _tokenizer_fingerprint
    before = _tokenizer_fingerprint(tokenizer)
    tokenizer([source, "uno"], truncation=True, max_length=4, padding=True)
    assert _tokenizer_fingerprint(tokenizer) == before
    for tok in (tokenizer, other):
        tokenized, _ = tokenize_examples(examples, tok, split="train", max_source_length=64,
                                         max_target_length=16, cache_dir=str(tmp_path))
        assert tokenized["input_ids"][0] == tok(source)["input_ids"]
