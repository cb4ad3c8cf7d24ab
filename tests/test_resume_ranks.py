"""A run resumes on another number of ranks: the examples of each step stay the same when
train.batch_size x train.grad_accum x ranks does, ZeRO 1-3 optimizer states are split anew by
DeepSpeed's universal checkpoint, and the continuation is the uninterrupted run's (fp32,
dropout 0: to the last bit here). A step that would change is refused, saying what to set."""

from __future__ import annotations

import json
import random

import pytest

from engine_runs import base_args, demo_files, final_weights, run, step_losses
from seq2seq_es.data.length_buckets import BucketedPlan
from seq2seq_es.data.packing import PackedPlan
from seq2seq_es.data.sampler import StepPlan
from seq2seq_es.data.token_budget import TokenBudgetPlan
from seq2seq_es.engine.checkpoint import EXAMPLES_PER_STEP, UNIVERSAL, TrainState


def _step_examples(plan, world: int, steps: int = 6) -> list[list[list[int]]]:
    """The micro-batches (as sorted index lists) of each of the first steps, over all ranks."""
    return [sorted(sorted(batch) for rank in range(world)
                   for batch in plan.micro_batches(1, step, rank)) for step in range(steps)]


@pytest.mark.parametrize("plan_of", [
    lambda src, tgt, accum, world: StepPlan(len(src), 3, accum, world, 3),
    lambda src, tgt, accum, world: TokenBudgetPlan(src, tgt, max_tokens=4000, grad_accum=accum,
                                                   world_size=world, seed=3),
    lambda src, tgt, accum, world: BucketedPlan(src, tgt, max_tokens=4000, grad_accum=accum,
                                                world_size=world, seed=3),
    lambda src, tgt, accum, world: PackedPlan(src, tgt, rows=2, source_len=512, target_len=128,
                                              grad_accum=accum, world_size=world, seed=3),
], ids=["fixed", "token_budget", "bucketed", "packed"])
def test_a_steps_examples_depend_on_grad_accum_times_ranks_only(plan_of):
    # What data_layout's per-step keys rest on: 4 ranks x 1, 2 x 2 and 1 x 4 draw the same
    # micro-batches for every step (dealt to other ranks), and as many steps per epoch.
    rng = random.Random(0)
    src = [rng.randint(20, 500) for _ in range(400)]
    tgt = [rng.randint(5, 80) for _ in range(400)]
    plans = {world: plan_of(src, tgt, 4 // world, world) for world in (4, 2, 1)}
    assert len({plan.steps_per_epoch for plan in plans.values()}) == 1
    by_world = {world: _step_examples(plan, world) for world, plan in plans.items()}
    assert by_world[4] == by_world[2] == by_world[1]
    assert by_world[1][0] != by_world[1][1]  # steps differ: the comparison can fail


def test_a_layout_saved_per_rank_is_read_per_step():
    # Checkpoints written before the per-step keys held per-rank counts: read back as the step's.
    old = {"train.seed": 42, "train.batch_size x train.grad_accum": 4, "steps per epoch": 6}
    state = TrainState.from_json(json.dumps({"world_size": 2, "data_layout": old}), 1)
    assert state.data_layout == {"train.seed": 42, EXAMPLES_PER_STEP: 8, "steps per epoch": 6}
    token = {"train.grad_accum": 2, "data.max_source_length": 96}
    state = TrainState.from_json(json.dumps({"world_size": 4, "data_layout": token}), 1)
    assert state.data_layout == {"train.grad_accum x ranks": 8, "data.max_source_length": 96}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("data"))


def _args(files, out, *, steps, stage, extra=()):
    return base_args(files, out, steps=steps, batch=2, extra=[
        "--dist.zero_stage", str(stage), "--train.save_every", "2", "--model.dropout", "0",
        *extra])


# The package's entry, with rank 0's data-layout check 3 s late.
LATE_RANK_0_ENTRY = """
import os, sys, time
from seq2seq_es.engine import checkpoint
check = checkpoint.Checkpointer.check_layout
def late(self, *args, **kwargs):
    if os.environ["RANK"] == "0":
        time.sleep(3)
    return check(self, *args, **kwargs)
checkpoint.Checkpointer.check_layout = late
from seq2seq_es.cli import console
console(["train", *sys.argv[1:]])
"""


def _with_a_late_rank_0(tmp_path, args):
    import subprocess
    import sys

    from engine_runs import REPO, _env, free_port

    entry = tmp_path / "late_rank_0.py"
    entry.write_text(LATE_RANK_0_ENTRY)
    # --tee 3: each line of a rank's output carries its local rank ("[default0]:...")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--tee", "3", "--master_port", str(free_port()), str(entry), *args],
                          cwd=REPO,
                          env={**_env(), "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_two_ranks_resume_on_one_exactly_and_a_step_size_change_is_refused(files, tmp_path,
                                                                            stage):
    # ZeRO-3 checks the two repairs of DeepSpeed's stage-3 universal load (the groups'
    # settings, one Adam step counter per sub-group): without either, step 4 differs.
    full, cut = tmp_path / "full", tmp_path / "cut"
    run("torchrun", 2, _args(files, full, steps=4, stage=stage))
    run("torchrun", 2, _args(files, cut, steps=2, stage=stage))
    # One rank with the same per-rank batch would make a step of 2 examples where it had 4.
    refused = run("none", 1, _args(files, cut, steps=4, stage=stage, extra=[
        "--train.resume", "must"]), check=False)
    assert refused.returncode == 2
    error = refused.stderr.strip().splitlines()[-1]
    assert f"{EXAMPLES_PER_STEP} 4 -> 2" in error
    assert "On 1 rank(s), train.batch_size x train.grad_accum = 4 keeps the checkpoint's 4 " \
           "examples per step (2 ranks)" in error
    # On its own two ranks, a doubled step is refused once, by rank 0 (each rank printed it);
    # rank 0 checks late here, so a rank 1 that checked for itself would say it first
    doubled = _with_a_late_rank_0(tmp_path, _args(files, cut, steps=4, stage=stage, extra=[
        "--train.resume", "must", "--train.grad_accum", "2"]))
    assert doubled.returncode != 0
    said = [line for line in (doubled.stdout + doubled.stderr).splitlines()
            if "error: " in line and line.startswith("[default")]  # the ranks' own lines
    assert len(said) == 1 and said[0].startswith("[default0]:error: "), said
    assert f"{EXAMPLES_PER_STEP} 4 -> 8" in said[0], said
    resumed = run("none", 1, _args(files, cut, steps=4, stage=stage, extra=[
        "--train.resume", "must", "--train.grad_accum", "2"]))
    assert "checkpoint step_00000002 of 2 rank(s) resumed on 1: the same examples per step, " \
           "optimizer states split anew" in resumed.stdout
    assert "MPU is not provided" not in resumed.stdout + resumed.stderr  # Megatron's, not ours
    assert step_losses(cut) == step_losses(full)  # steps 3 and 4 bit for bit
    expected, got = final_weights(full), final_weights(cut)
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) < 1e-6
    checkpoints = cut / "checkpoints"
    assert not (checkpoints / "step_00000002" / UNIVERSAL).exists()  # removed after the load
    saved = json.loads((checkpoints / "step_00000004" / "trainer_state.json").read_text())
    assert saved["world_size"] == 1  # the next resume splits this run's checkpoint, not the old
    assert saved["data_layout"][EXAMPLES_PER_STEP] == 4


@pytest.mark.slow
@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (2, "bf16"), (3, "fp32")])
def test_one_rank_resumes_on_two(files, tmp_path, stage, precision):
    # Stage 0 holds the whole optimizer (no conversion; rank 1 continues rank 0's random
    # stream); bf16 at stage 2 and ZeRO-3 go through the converter from one partition to two.
    extra = ["--train.precision", precision]
    full, cut = tmp_path / "full", tmp_path / "cut"
    run("none", 1, _args(files, full, steps=4, stage=stage, extra=extra + [
        "--train.grad_accum", "2"]))
    run("none", 1, _args(files, cut, steps=2, stage=stage, extra=extra + [
        "--train.grad_accum", "2"]))
    resumed = run("torchrun", 2, _args(files, cut, steps=4, stage=stage, extra=extra + [
        "--train.resume", "must"]))
    assert "of 1 rank(s) resumed on 2: the same examples per step" in resumed.stdout
    assert ("optimizer states split anew" in resumed.stdout) == (stage > 0)
    losses, expected = step_losses(cut), step_losses(full)
    assert sorted(losses) == [1, 2, 3, 4]
    assert losses[3] == expected[3]  # the weights the resume starts from are the saved ones
    # The fourth step follows an update made on two ranks: fp32 sums in another order, bf16
    # reduces in bf16 (one rank x 2 and two ranks x 1 differ by as much uninterrupted).
    tolerance = 1e-6 if precision == "fp32" else 1e-4
    assert losses[4] == pytest.approx(expected[4], abs=tolerance)
    assert losses[4] != losses[3]


@pytest.mark.slow
def test_the_best_checkpoint_of_the_old_ranks_is_loaded_at_the_end(files, tmp_path):
    # The best (step 2, by validation loss) was saved by 2 ranks; the run resumed on one, got
    # worse (learning rate 5) and must end on the best: it failed with DeepSpeed's "DP world
    # size of 2" traceback at every attempt, without DONE (found by a review).
    out = tmp_path / "best"
    evaluated = ["--train.eval_at_end", "true", "--train.best_metric", "loss",
                 "--train.eval_test", "false"]
    run("torchrun", 2, _args(files, out, steps=2, stage=2, extra=evaluated))
    best_weights = final_weights(out)  # final/ of the first run: its step 2, the best
    # a conversion left half-removed by a kill must not be reused
    (out / "checkpoints" / "step_00000002" / UNIVERSAL).mkdir()
    resumed = run("none", 1, _args(files, out, steps=4, stage=2, extra=evaluated + [
        "--train.resume", "must", "--train.grad_accum", "2", "--optim.lr", "5"]))
    assert "best checkpoint: step 2" in resumed.stdout
    assert (out / "DONE").is_file()
    got = final_weights(out)
    assert max((best_weights[k] - got[k]).abs().max().item() for k in got) == 0.0
    step_folder = out / "checkpoints" / "step_00000002"
    assert not (step_folder / UNIVERSAL).exists()
    assert not (step_folder / "latest_universal").exists()


@pytest.mark.parametrize("key, saved_value, new_value", [
    ("max_source_length", 512, 256), ("max_target_length", 128, 64)])
def test_a_token_plan_resume_with_other_length_limits_is_refused_naming_the_key(
        key, saved_value, new_value):
    # Token-budget micro-batches are packed by the truncated lengths: another limit makes step
    # k hold other examples, so the saved position would skip some and repeat others.
    from types import SimpleNamespace

    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine.checkpoint import check_same_layout, data_layout
    from seq2seq_es.errors import ConfigError

    def layout(value):
        cfg = RunConfig()
        cfg.train.batching, cfg.train.max_tokens = "token_budget", 4000
        setattr(cfg.data, key, value)
        return data_layout(cfg, SimpleNamespace(steps_per_epoch=7, world_size=1), 100)

    saved, current = layout(saved_value), layout(new_value)
    check_same_layout("ckpt", saved, layout(saved_value))  # the same limits resume
    with pytest.raises(ConfigError) as error:
        check_same_layout("ckpt", saved, current)
    assert error.value.key == "train.resume"
    assert f"data.{key} {saved_value} -> {new_value}" in str(error.value)
