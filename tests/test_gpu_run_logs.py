"""On a CUDA device (benchmarks/gpu_all.sh, section 4): a training run logs the interval's peak
GPU memory and gradient norm, and train.deterministic repeats a run bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from engine_runs import base_args, demo_files, run, step_losses

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _train_records(out):
    return [record for record in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in record]


def test_a_gpu_run_logs_its_memory_and_gradient_norm(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    out = tmp_path / "run"
    run("none", 1, base_args(files, out, steps=3, extra=["--train.precision", "bf16"]))
    records = _train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0 < r["train/memory_gib"] < 80 for r in records)
    assert all(r["train/grad_norm"] > 0 for r in records)


def test_deterministic_gpu_runs_repeat_bit_for_bit(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        run("none", 1, base_args(files, out, steps=4, extra=["--train.deterministic", "true"]))
    assert step_losses(first) == step_losses(second)


@pytest.mark.parametrize("attention,lean_ce", [("hf", False), ("sdpa", False), ("sdpa", True)])
def test_a_gpu_training_step_makes_the_host_wait_nowhere(tmp_path, attention, lean_ce):
    """torch's sync debug mode warns at every operation that makes the host wait for the GPU (a
    read-back, a copy to or from pageable memory): none in the training step's code or
    DeepSpeed's, with gradient accumulation, bf16 and clipping (issue 12.1), nor in the lean
    cross-entropy (model.lean_ce); on BART's model.attention sdpa none in transformers' either
    (kernels/read_free_masks.py).
    DeepSpeed's throughput timer synchronised twice per micro-batch until it was turned off
    (tests/test_step_syncs.py counts that one)."""
    import warnings

    from engine_runs import tiny_step_engine
    from seq2seq_es.engine import distributed as D
    from seq2seq_es.engine.step import TrainStep

    env = D.read_env({})
    D.init(env, "auto")
    files = demo_files(tmp_path / "data", train_size=16)
    cfg, engine, batches = tiny_step_engine(files, env, grad_accum=2, precision="bf16",
                                            attention=attention, lean_ce=lean_ce)
    step = TrainStep(engine, env, cfg)
    try:
        step(batches[:2], 0)  # lazy initialisation (the optimizer's state, pinned buffers)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for number in range(1, 4):
                    step(batches[2:4] if number % 2 else batches[:2], number)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        step.close()
        engine.destroy()
    waits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    # transformers' own mask checks (`padding_mask.all()` to let SDPA skip a mask, up to three
    # per BART forward) wait too, as in the Trainer route; tests/test_step_syncs.py counts them
    # apart from the step's. Any other wait of transformers' is a new one: named here.
    theirs = [w for w in waits if "/transformers/" in w.filename.replace("\\", "/")]
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in waits if w not in theirs]
    assert ours == []
    assert all(w.filename.endswith("masking_utils.py") for w in theirs), \
        [f"{w.filename}:{w.lineno}" for w in theirs]
    if attention == "sdpa":
        assert theirs == [], [f"{w.filename}:{w.lineno}" for w in theirs]


def test_a_run_on_cuda_graphs_trains_and_validates_as_the_eager_one(tmp_path):
    """model.compile_mode reduce-overhead (CUDA graphs, issue 12): bucketed batches, a graph
    per shape, two micro-batches a step (the first one's gradients, kept by autograd in the
    graph's memory, must survive the second replay: step.keep_grads_out_of_graph_memory), then
    a validation that runs eagerly; the losses are the eager run's (fp32, inductor's fusions
    aside; no dropout: inductor draws its masks from its own generator)."""
    files = demo_files(tmp_path / "data", train_size=24)
    bucketed = ["--train.batching", "bucketed", "--train.max_tokens", "600",
                "--train.length_buckets", "3", "--train.eval_at_end", "true",
                "--train.grad_accum", "2", "--model.dropout", "0"]
    eager, graphs = tmp_path / "eager", tmp_path / "graphs"
    run("none", 1, base_args(files, eager, steps=4, extra=bucketed))
    run("none", 1, base_args(files, graphs, steps=4, extra=bucketed + [
        "--model.compile", "true", "--model.compile_mode", "reduce-overhead"]))
    expected, got = step_losses(eager), step_losses(graphs)
    assert sorted(got) == [1, 2, 3, 4]
    assert got == pytest.approx(expected, rel=1e-3)
    assert "eval/loss" in (graphs / "metrics.jsonl").read_text()


def test_the_ranks_stop_poll_makes_the_host_wait_nowhere():
    """Trainer.poll_ranks on several ranks begins the agreement after a step and reads it after
    the next (distributed.PendingMax): beginning it must not wait for the kernels queued before
    it. torch.tensor(values, device=cuda) copied from pageable memory, which synchronises. (One
    process here: a one-rank NCCL group runs the same calls.)"""
    import warnings

    from seq2seq_es.engine import distributed as D

    env = D.read_env({})
    D.init(env, "auto")
    torch.cuda._sleep(10**8)  # kernels still queued when the poll begins
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            pending = D.PendingMax([1.0, 0.0], env.device)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert not [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert pending.read() == [1.0, 0.0]
