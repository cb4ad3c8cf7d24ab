"""Bucketed token-budget batching: few shapes, low padding, each example once, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from seq2seq_es.bench.data import draw_lengths
from seq2seq_es.data.collator import Seq2SeqCollator
from seq2seq_es.data.length_buckets import (BucketedPlan, best_buckets_1d, choose_buckets,
                                            dummy_features, warm_up_model, warm_up_shapes)
from seq2seq_es.errors import ConfigError

from test_token_budget import all_steps, miam_like, mlsum_like


def collated_shape(collator: Seq2SeqCollator, src, tgt, batch) -> tuple[int, int, int]:
    """(rows, source, target) of the collated batch, without building its tensors."""
    return (len(batch), collator.source_length(max(src[i] for i in batch)),
            collator.target_length(max(tgt[i] for i in batch)))


MLSUM_LIKE = {
    # The bench's generator (seq2seq_es/bench/data.py): N(900, 150) in [200, 1024].
    "bench-mlsum": tuple(x.tolist() for x in draw_lengths("mlsum", 4000, seed=0)),
    # tests/test_token_budget.py's: N(900, 250) in [40, 1024], a third cut at 1024.
    "test-mlsum": mlsum_like(4000),
}


@pytest.mark.parametrize("name", sorted(MLSUM_LIKE))
@pytest.mark.parametrize("source_align", [8, 64])      # GPU default; model.compile's 64
def test_mlsum_like_few_shapes_and_under_five_percent_padding(name, source_align):
    src, tgt = MLSUM_LIKE[name]
    plan = BucketedPlan(src, tgt, max_tokens=16384, grad_accum=2, world_size=2, seed=0,
                        source_align=source_align)
    buckets = plan.buckets
    assert buckets.pairs <= 16
    assert all(s % source_align == 0 for s in buckets.source)
    assert all(t % 8 == 0 for t in buckets.target)
    assert buckets.source[-1] >= max(src) and buckets.target[-1] >= max(tgt)
    collator = Seq2SeqCollator(pad_token_id=1, decoder_start_token_id=2,
                               pad_to_multiple_of=source_align)
    collator.set_buckets(buckets.source, buckets.target)
    for epoch in (0, 1):
        shapes, real, padded = set(), 0, 0
        for step in all_steps(plan, epoch):
            for rank in step:
                for batch in rank:
                    rows, s, t = collated_shape(collator, src, tgt, batch)
                    assert rows * (s + t) <= 16384
                    shapes.add((rows, s, t))
                    real += sum(src[i] + tgt[i] for i in batch)
                    padded += rows * (s + t)
        # Distinct shapes of the epoch, as the collator pads them: never more than the buckets.
        assert shapes == set(plan.shapes())
        assert len(shapes) <= buckets.pairs <= 16
        # Padding counted against real tokens (stricter than against all tokens).
        pad_per_real = (padded - real) / real
        print(f"{name} align {source_align} epoch {epoch}: source buckets {list(buckets.source)}, "
              f"target buckets {list(buckets.target)}, {len(shapes)} shapes, "
              f"pad/real {pad_per_real:.2%}, pad/all {1 - real / padded:.2%}, "
              f"dropped {plan.dropped_per_epoch}")
        assert pad_per_real < 0.05
        assert plan.padded_fraction(epoch) == pytest.approx(1 - real / padded)
    assert plan.random_order_padded_fraction(0) > 3 * plan.padded_fraction(0)


def test_mlsum_like_padding_stays_under_five_percent_for_other_budgets_and_seeds():
    src, tgt = mlsum_like(3000, seed=5)
    for budget, seed in [(8192, 1), (32768, 2)]:
        plan = BucketedPlan(src, tgt, max_tokens=budget, grad_accum=1, world_size=1, seed=seed)
        real, padded = plan.padding(seed)
        assert (padded - real) / real < 0.05
        assert len(plan.shapes()) <= 16


def test_collated_tensors_have_the_plan_shapes():
    src, tgt = miam_like(600, seed=1)
    plan = BucketedPlan(src, tgt, max_tokens=1024, grad_accum=2, world_size=2, seed=3,
                        max_shapes=6)
    assert len(plan.shapes()) <= plan.buckets.pairs <= 6
    collator = Seq2SeqCollator(pad_token_id=0, decoder_start_token_id=0)
    collator.set_buckets(plan.buckets.source, plan.buckets.target)
    features = [{"input_ids": [5] * s, "labels": [6] * t} for s, t in zip(src, tgt)]
    for step in range(plan.steps_per_epoch):
        for rank in range(2):
            batches = plan.micro_batches(0, step, rank)
            for batch, (rows, s, t) in zip(batches, plan.micro_batch_shapes(0, step, rank)):
                out = collator([features[i] for i in batch])
                assert tuple(out["input_ids"].shape) == (rows, s)
                assert tuple(out["labels"].shape) == tuple(out["decoder_input_ids"].shape) \
                    == (rows, t)
                assert int(out["attention_mask"].sum()) == sum(src[i] for i in batch)
                assert int((out["labels"] != -100).sum()) == sum(tgt[i] for i in batch)


@pytest.mark.parametrize("world_size, grad_accum", [(1, 1), (2, 3), (4, 2)])
def test_every_example_once_per_epoch_except_the_counted_drops(world_size, grad_accum):
    src, tgt = mlsum_like(1500, seed=3)
    plan = BucketedPlan(src, tgt, max_tokens=8192, grad_accum=grad_accum,
                        world_size=world_size, seed=11)
    left_out = []
    for epoch in (0, 1):
        seen = []
        for step in all_steps(plan, epoch):
            # Every rank gets grad_accum micro-batches in every step.
            assert [len(rank) for rank in step] == [grad_accum] * world_size
            for rank in step:
                for batch in rank:
                    assert batch, "empty micro-batch"
                    seen += batch
        assert len(seen) == len(set(seen)), "an example appears twice in one epoch"
        assert len(seen) + plan.dropped_per_epoch == len(src)
        left_out.append(set(range(len(src))) - set(seen))
    # Drops are at most one micro-batch's remainder plus the micro-batches that do not fill a
    # step, and which examples they hit changes with the epoch.
    most_rows = max(rows for rows, _, _ in plan.shapes())
    assert plan.dropped_per_epoch < most_rows * plan.micro_batches_per_step
    if plan.dropped_per_epoch:
        assert left_out[0] != left_out[1]


def test_remainders_go_to_the_next_target_bucket_and_every_drop_is_counted():
    # Handed on only to the next source bucket, the remainders of the last source bucket's pairs
    # had nowhere to go: left out of every epoch, and not counted (600 examples, 585 seen, 0 said
    # left out).
    src, tgt = miam_like(600)
    plan = BucketedPlan(src, tgt, max_tokens=2048, grad_accum=1, world_size=1, seed=0,
                        max_shapes=6)
    seen = [i for step in all_steps(plan, 0) for rank in step for batch in rank for i in batch]
    assert len(seen) == len(set(seen))
    assert len(seen) + plan.dropped_per_epoch == len(src)
    most_rows = max(rows for rows, _, _ in plan.shapes())
    assert plan.dropped_per_epoch < most_rows  # the last pair's remainder, less than a batch


def test_every_micro_batch_holds_an_example_of_its_own_shape():
    # A pair makes no more micro-batches than it has examples of its own (the module's rule):
    # else micro-batches of examples handed on from smaller pairs alone, each padded to a shape
    # none of its examples needs (here 300 MLSUM-like examples, one row per micro-batch).
    src, tgt = mlsum_like(300)
    plan = BucketedPlan(src, tgt, max_tokens=1024, grad_accum=1, world_size=1, seed=0,
                        max_shapes=6)
    source_buckets, target_buckets = plan.buckets.source, plan.buckets.target

    def own_shape(i):
        return (min(b for b in source_buckets if b >= src[i]),
                min(b for b in target_buckets if b >= tgt[i]))

    for step in range(plan.steps_per_epoch):
        batches = plan.micro_batches(0, step, 0)
        shapes = plan.micro_batch_shapes(0, step, 0)
        for batch, (_, s, t) in zip(batches, shapes):
            assert (s, t) in {own_shape(i) for i in batch}


def test_ranks_get_equal_counts_and_similar_tokens():
    src, tgt = MLSUM_LIKE["bench-mlsum"]
    plan = BucketedPlan(src, tgt, max_tokens=16384, grad_accum=2, world_size=4, seed=0)
    iters = [plan.iter_steps(0, 0, r) for r in range(4)]
    per_rank_steps = [list(itertools.islice(it, plan.steps_per_epoch)) for it in iters]
    assert {len(steps) for steps in per_rank_steps} == {plan.steps_per_epoch}
    for step in range(plan.steps_per_epoch):
        counts = [len(per_rank_steps[r][step][2]) for r in range(4)]
        assert counts == [2] * 4
        shapes = [plan.micro_batch_shapes(0, step, r) for r in range(4)]
        loads = [sum(rows * (s + t) for rows, s, t in rank) for rank in shapes]
        # Every micro-batch fills the budget to within one row: ranks carry similar tokens.
        assert max(loads) - min(loads) <= 2 * max(s + t for rank in shapes for _, s, t in rank)


def test_order_is_a_pure_function_of_seed_and_epoch():
    src, tgt = miam_like(2000, seed=4)
    a = BucketedPlan(src, tgt, max_tokens=1024, grad_accum=2, world_size=2, seed=9)
    b = BucketedPlan(src, tgt, max_tokens=1024, grad_accum=2, world_size=2, seed=9)
    assert all_steps(a, 3) == all_steps(b, 3)
    assert all_steps(a, 0) != all_steps(a, 1), "the order must change between epochs"
    # the batch shapes come in another order too, not only examples swapped within a bucket
    def shapes(epoch):
        return [a.micro_batch_shapes(epoch, step, rank) for step in range(a.steps_per_epoch)
                for rank in range(a.world_size)]
    assert shapes(0) != shapes(1) and sorted(shapes(0)) == sorted(shapes(1))
    other_seed = BucketedPlan(src, tgt, max_tokens=1024, grad_accum=2, world_size=2, seed=10)
    assert all_steps(a, 0) != all_steps(other_seed, 0)
    assert a.steps_per_epoch == other_seed.steps_per_epoch
    assert a.shapes() == other_seed.shapes()          # the layout does not depend on the seed


def test_resuming_mid_epoch_yields_exactly_the_remaining_steps():
    src, tgt = mlsum_like(1200, seed=6)
    plan = BucketedPlan(src, tgt, max_tokens=8192, grad_accum=2, world_size=2, seed=5)
    per_epoch = plan.steps_per_epoch
    for rank in range(2):
        full = plan.iter_steps(0, 0, rank)
        uninterrupted = [next(full) for _ in range(per_epoch + 5)]   # crosses into epoch 1
        cut = per_epoch - 3
        epoch, step_in_epoch, _ = uninterrupted[cut]
        # A fresh plan, as after a restart, from the saved (epoch, step_in_epoch).
        resumed_plan = BucketedPlan(src, tgt, max_tokens=8192, grad_accum=2, world_size=2,
                                    seed=5)
        resumed = resumed_plan.iter_steps(epoch, step_in_epoch, rank)
        assert [next(resumed) for _ in range(len(uninterrupted) - cut)] == uninterrupted[cut:]


def test_one_dimensional_buckets_are_optimal():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, 200)
    for count in (1, 2, 3):
        values, wasted = best_buckets_1d(lengths, 3, align=4)[count - 1]
        rounded = sorted(set((-(-lengths // 4) * 4).tolist()))
        best = None
        for chosen in itertools.combinations(rounded[:-1], count - 1):
            edges = np.array(list(chosen) + [rounded[-1]])
            waste = int((edges[np.searchsorted(edges, lengths)] - lengths).sum())
            best = waste if best is None else min(best, waste)
        assert wasted == best
        assert values[-1] == rounded[-1] and len(values) <= count


def test_bucket_grid_respects_the_shape_cap():
    src, tgt = miam_like(3000, seed=2)
    for cap in (1, 4, 9, 16):
        buckets = choose_buckets(src, tgt, max_shapes=cap)
        assert buckets.pairs <= cap
    with pytest.raises(ConfigError, match="train.length_buckets"):
        choose_buckets(src, tgt, max_shapes=0)


def test_collator_beyond_the_largest_bucket_falls_back_to_plain_rounding():
    collator = Seq2SeqCollator(pad_token_id=0, decoder_start_token_id=0, pad_to_multiple_of=8)
    collator.set_buckets((64, 128), (16, 32))
    out = collator([{"input_ids": [3] * 65, "labels": [4] * 10}])
    assert tuple(out["input_ids"].shape) == (1, 128) and tuple(out["labels"].shape) == (1, 16)
    out = collator([{"input_ids": [3] * 130, "labels": [4] * 33}])
    assert tuple(out["input_ids"].shape) == (1, 136) and tuple(out["labels"].shape) == (1, 33)
    with pytest.raises(ValueError, match="multiples of 8"):
        collator.set_buckets((60,), (16,))
    dynamic = Seq2SeqCollator(pad_token_id=0, decoder_start_token_id=0, mark_dynamic=True)
    assert tuple(dynamic(dummy_features((3, 7, 5), token_id=9))["labels"].shape) == (3, 5)


def test_warm_up_runs_every_shape_once_largest_first():
    seen = []
    seconds = warm_up_shapes(seen.append, [(20, 64, 16), (4, 512, 64), (8, 256, 32)])
    assert seen == [(4, 512, 64), (8, 256, 32), (20, 64, 16)]
    assert set(seconds) == set(seen)


def test_too_few_micro_batches_for_one_step_name_the_budget():
    with pytest.raises(ConfigError, match=r"train.max_tokens': the 4 training examples \(24 "
                       r"source \+ target tokens in all\).*fewer than the 8"):
        BucketedPlan([5] * 4, [1] * 4, max_tokens=12, grad_accum=4, world_size=2, seed=0)


# -- wiring and a real run --------------------------------------------------------------------

def _accepts_bucketed() -> bool:
    from seq2seq_es.config import RunConfig, validate
    cfg = RunConfig()
    cfg.train.batching, cfg.train.max_tokens = "bucketed", 512
    try:
        validate(cfg)
    except ConfigError as err:
        if err.key == "train.batching":
            return False
    except Exception:
        pass
    return True


def test_get_step_plan_gives_the_collator_the_plan_buckets():
    import datasets

    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine import distributed as D
    from seq2seq_es.engine.builders import SplitData, get_step_plan

    src, tgt = miam_like(300, seed=7)
    tokenized = datasets.Dataset.from_dict({"input_ids": [[5] * s for s in src],
                                            "labels": [[6] * t for t in tgt]})
    cfg = RunConfig()                   # set directly: config.validate may not know the value yet
    cfg.train.batching, cfg.train.max_tokens, cfg.train.grad_accum = "bucketed", 512, 2
    cfg.train.max_steps = 5
    env = D.DistEnv(rank=0, world_size=2, local_rank=0, master_addr="127.0.0.1",
                    master_port=0, launcher="none")
    collator = Seq2SeqCollator(pad_token_id=0, decoder_start_token_id=0, pad_to_multiple_of=16)
    with pytest.raises(ValueError, match="needs the collator"):
        get_step_plan(cfg, env, SplitData(None, tokenized, None), 16)
    plan, total = get_step_plan(cfg, env, SplitData(None, tokenized, None), 16, collator=collator)
    assert isinstance(plan, BucketedPlan) and total == 5
    assert collator.source_buckets == plan.buckets.source
    assert collator.target_buckets == plan.buckets.target
    assert all(s % 16 == 0 for s in plan.buckets.source)   # aligned to the collator's multiple
    features = tokenized.to_list()
    for step in range(plan.steps_per_epoch):
        shapes = plan.micro_batch_shapes(0, step, 1)
        for batch, shape in zip(plan.micro_batches(0, step, 1), shapes):
            out = collator([features[i] for i in batch])
            assert (len(batch), *out["input_ids"].shape[1:], *out["labels"].shape[1:]) == shape


@pytest.mark.slow
@pytest.mark.skipif(not _accepts_bucketed(),
                    reason="config.validate does not accept train.batching=bucketed yet "
                           "(issue 12.2: the config lines are in the report)")
@pytest.mark.parametrize("launcher, ranks", [("none", 1), ("torchrun", 2)])
def test_a_short_real_run_trains_with_bucketed_batches(tmp_path, launcher, ranks):
    from engine_runs import base_args, demo_files, run, step_losses

    files = demo_files(tmp_path / "data", train_size=48)
    out = tmp_path / "run"
    proc = run(launcher, ranks, base_args(files, out, steps=6, extra=[
        "--train.batching", "bucketed", "--train.max_tokens", "640", "--train.grad_accum", "2"]))
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 7))
    assert all(np.isfinite(v) for v in losses.values())
    assert losses[6] < losses[1]
    assert "padding in epoch 0" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_after_warm_up_a_statically_compiled_model_never_recompiles_in_an_epoch():
    """barto-tiny compiled with dynamic=False (eager backend: Dynamo's graphs, no codegen): the
    warm-up compiles one graph per bucket shape, more shapes than Dynamo's default recompile limit
    of 8 (without allow_static_shapes the 9th shape runs uncompiled), and bucketed batches then
    need no new graph; the warm-up leaves the weights untouched."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from seq2seq_es.bench.shapes import build_model, get_shape
    from seq2seq_es.engine.loss import token_ce_sum

    shape = get_shape("barto-tiny")
    src, tgt = miam_like(400, seed=3)
    plan = BucketedPlan(src, tgt, max_tokens=600, grad_accum=1, world_size=1, seed=0,
                        max_shapes=10)
    assert 8 < len(plan.shapes()) <= 10
    collator = Seq2SeqCollator(shape.pad_token_id, shape.decoder_start_token_id)
    collator.set_buckets(plan.buckets.source, plan.buckets.target)
    model = build_model(shape, torch.device("cpu"), seed=0, dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = torch.compile(model, backend="eager", dynamic=False)
        seconds = warm_up_model(compiled, model.parameters(), plan.shapes(), collator,
                                token_id=shape.first_plain_id)
        assert set(seconds) == set(plan.shapes())
        graphs = counters["stats"]["unique_graphs"]
        assert graphs == len(plan.shapes())           # one frame, one static graph per shape
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        features = [{"input_ids": [shape.first_plain_id] * s, "labels": [shape.first_plain_id] * t}
                    for s, t in zip(src, tgt)]
        for batch in plan.epoch_batches(0)[:2 * len(plan.shapes())]:
            out = collator([features[i] for i in batch])
            labels = out.pop("labels")
            # as TrainStep calls it (the warm-up's call, or every shape compiles again)
            token_ce_sum(compiled(**out, use_cache=False).logits, labels).backward()
        assert counters["stats"]["unique_graphs"] == graphs, "a shape compiled after warm-up"
    finally:
        torch._dynamo.reset()


def test_the_summary_names_bucketed_batches_and_what_their_padding_includes():
    # It read "token-budget batches: ..." and set a padding that includes the rounding up to
    # the buckets beside a random order's without any, with no word of the difference.
    plan = BucketedPlan([40, 70, 100, 130] * 8, [10, 20, 30, 40] * 8, max_tokens=400,
                        grad_accum=1, world_size=1, seed=0, max_shapes=2)
    last = plan.summary()[-1]
    assert last.startswith("bucketed batches: ") and \
        "rounding up to the buckets included (random order with the same budget and no " \
        "buckets: " in last


def test_the_summary_says_when_examples_alone_exceed_the_budget():
    # "up to 400 padded tokens per micro-batch" was all it said, while a pair of buckets wider
    # than the budget held one example per micro-batch, over it.
    plan = BucketedPlan([40, 70, 100, 130] * 8 + [500] * 4, [10, 20, 30, 40] * 8 + [60] * 4,
                        max_tokens=400, grad_accum=1, world_size=1, seed=0, max_shapes=4)
    notes = [line for line in plan.summary() if "alone pad to more than" in line]
    widest = max(s + t for s, t, _ in plan.pairs)
    assert notes == [
        f"note: 4 training example(s) alone pad to more than train.max_tokens 400 (the longest "
        f"to {widest} tokens); each goes in a micro-batch of its own, over the budget: set "
        f"train.max_tokens to at least {widest}, or lower data.max_source_length / "
        "data.max_target_length, to keep every micro-batch within it"]
    within = BucketedPlan([40, 70, 100, 130] * 8, [10, 20, 30, 40] * 8, max_tokens=400,
                          grad_accum=1, world_size=1, seed=0, max_shapes=4)
    assert not [line for line in within.summary() if "alone pad to more than" in line]


@pytest.mark.parametrize("attention", ["hf", "sdpa"])
@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_padding_to_a_bucket_leaves_each_examples_loss_unchanged(name, attention):
    """A bucket pads further than the batch's longest example (sources to 504 here, not 482):
    the padding must stay invisible, as for the model alone on each example (learned positions,
    T5's relative buckets, the padding mask of each attention implementation)."""
    import copy

    import torch

    from seq2seq_es.engine.builders import set_dropout
    from seq2seq_es.kernels.bart_attention import apply_bart_attention
    from seq2seq_es.kernels.t5_attention import apply_t5_attention
    from seq2seq_es.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(name, None)
    model = copy.deepcopy(model).float()
    set_dropout(model, 0.0)
    if attention == "sdpa":
        (apply_bart_attention if name == "barto-tiny" else apply_t5_attention)(model, "sdpa")
    model.eval()
    g = torch.Generator().manual_seed(0)
    features = [{"input_ids": torch.randint(5, model.config.vocab_size, (s,), generator=g).tolist(),
                 "labels": torch.randint(5, model.config.vocab_size, (t,), generator=g).tolist()}
                for s, t in ((482, 71), (310, 26), (304, 103))]
    pad, start = tokenizer.pad_token_id, model.config.decoder_start_token_id

    def per_example(collator, rows):
        """Each example's logits at its own target positions."""
        batch = dict(collator(rows))
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits
        return [logits[i, labels[i] != -100] for i in range(len(rows))]

    bucketed = Seq2SeqCollator(pad, start, pad_to_multiple_of=8)
    bucketed.set_buckets((344, 504, 1024), (64, 136))
    shape = bucketed(features)["input_ids"].shape, bucketed(features)["labels"].shape
    assert shape == ((3, 504), (3, 136))
    alone = [per_example(Seq2SeqCollator(pad, start), [f])[0] for f in features]
    for got, expected in zip(per_example(bucketed, features), alone):
        # logits, not summed losses: a tiny model's near-uniform attention moves them by ~1e-3
        # when padding is attended, which a sum of ~500 nats would hide
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)
