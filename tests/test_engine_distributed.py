"""The training engine on real processes: torchrun, deepspeed and accelerate launchers, ZeRO 0-3,
loss normalisation, SIGKILL + exact resume, and atomic checkpoints. Two CPU processes, gloo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine_runs import (base_args, demo_files, final_weights, kill_group, max_weight_diff, run,
                         start, step_losses, wait_for)

pytestmark = pytest.mark.slow

STEPS = 8


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="module")
def files(workdir):
    return demo_files(workdir / "data", train_size=64)


_cache: dict = {}


def cached_run(workdir: Path, files, name: str, launcher: str, nproc: int, *, model: str,
               batch: int, accum: int = 1, stage: int = 0, extra: list[str] | None = None) -> Path:
    """Run once per test module and reuse (several tests compare against the same runs)."""
    key = (name, launcher, nproc, model, batch, accum, stage, tuple(extra or []))
    if key not in _cache:
        out = workdir / name
        shutil.rmtree(out, ignore_errors=True)
        args = base_args(files, out, model=model, steps=STEPS, batch=batch,
                         extra=["--train.grad_accum", str(accum), "--dist.zero_stage", str(stage),
                                "--model.dropout", "0.0", *(extra or [])])
        run(launcher, nproc, args)
        _cache[key] = out
    return _cache[key]


def reference(workdir, files, model):
    """One process, one micro-batch of 8: the split every other run must reproduce."""
    return cached_run(workdir, files, f"{model}-ref", "none", 1, model=model, batch=8)


def two_ranks(workdir, files, model, stage, extra=None):
    # ZeRO-3 also evaluates: generation with synced_gpus over shards of unequal real length.
    evaluate = ["--train.eval_at_end", "true"] if stage == 3 else []
    return cached_run(workdir, files, f"{model}-z{stage}", "torchrun", 2, model=model, batch=4,
                      stage=stage, extra=["--train.save_every", "2", *evaluate, *(extra or [])])


def assert_losses_close(a: dict, b: dict, tol: float) -> None:
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert abs(a[step] - b[step]) <= tol * max(1.0, abs(b[step])), (step, a[step], b[step])


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("model", ["barto-tiny", "t5s-tiny"])
def test_two_ranks_match_one_process_under_every_zero_stage(workdir, files, model, stage):
    ref = reference(workdir, files, model)
    out = two_ranks(workdir, files, model, stage)
    assert_losses_close(step_losses(out), step_losses(ref), 1e-5)
    # Adam divides by the gradient's own scale, so float-rounding differences between the splits
    # move weights by up to ~1e-5 of an lr of 1e-3; a wrong normalisation moves them by ~1e-3.
    assert max_weight_diff(final_weights(out), final_weights(ref)) < 1e-4
    # The export loads with from_pretrained, under ZeRO-3 too.
    from transformers import AutoModelForSeq2SeqLM
    AutoModelForSeq2SeqLM.from_pretrained(out / "final")
    if stage == 3:
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [m for m in metrics if "eval/rougeL" in m]
        assert evals and evals[-1]["step"] == STEPS
        predictions = (out / "eval" / f"step_{STEPS:08d}" / "predictions.jsonl").read_text()
        assert len(predictions.splitlines()) == 5  # 5 examples over 2 ranks: none lost or doubled


def test_loss_normalisation_does_not_depend_on_how_a_step_is_split(workdir, files):
    """1 rank x 4 accumulation x batch 2 == 2 ranks x 1 x batch 4 == 1 x 1 x batch 8."""
    ref = reference(workdir, files, "barto-tiny")                       # 1 x 1 x 8
    accumulated = cached_run(workdir, files, "barto-accum", "none", 1, model="barto-tiny",
                             batch=2, accum=4)                         # 1 x 4 x 2
    ranks = two_ranks(workdir, files, "barto-tiny", 0)                 # 2 x 1 x 4
    for other in (accumulated, ranks):
        assert_losses_close(step_losses(other), step_losses(ref), 1e-5)
        assert max_weight_diff(final_weights(other), final_weights(ref)) < 1e-4
    # A per-micro-batch mean would weight the short targets of a small micro-batch more: the
    # runs above would then differ. Check the targets really differ in length across examples.
    lengths = {len(json.loads(line)["summary"]) for line in open(files["train"])}
    assert len(lengths) > 3


def _killed_and_resumed(workdir, files, name, stage, *, kill_when, extra,
                        extra_env=None) -> Path:
    out = workdir / name
    shutil.rmtree(out, ignore_errors=True)
    args = base_args(files, out, steps=STEPS, batch=4,
                     extra=["--dist.zero_stage", str(stage), "--train.save_every", "2",
                            "--train.resume", "auto", *extra])
    proc = start("torchrun", 2, args, extra_env)
    try:
        wait_for(lambda: kill_when(out) or proc.poll() is not None)
    finally:
        kill_group(proc)
    assert not (out / "DONE").exists(), "the run finished before it could be killed"
    run("torchrun", 2, args)
    return out


def _metrics_step(out: Path, step: int) -> bool:
    return step in step_losses(out)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_sigkill_and_resume_auto_is_exact(workdir, files, stage):
    # Under stage 0 dropout stays on, so the RNG states must be restored too (bitwise).
    dropout = [] if stage == 0 else ["--model.dropout", "0.0"]
    uninterrupted = (cached_run(workdir, files, "barto-z0-dropout", "torchrun", 2,
                                model="barto-tiny", batch=4, stage=0,
                                extra=["--train.save_every", "2", "--model.dropout", "0.1"])
                     if stage == 0 else two_ranks(workdir, files, "barto-tiny", stage))
    extra = ["--model.dropout", "0.1"] if stage == 0 else dropout
    resumed = _killed_and_resumed(workdir, files, f"resume-z{stage}", stage,
                                  kill_when=lambda out: _metrics_step(out, 5), extra=extra)
    a, b = step_losses(resumed), step_losses(uninterrupted)
    w_a, w_b = final_weights(resumed), final_weights(uninterrupted)
    if stage == 0:
        assert a == b
        assert all(torch.equal(w_a[k], w_b[k]) for k in w_b)
    else:
        assert_losses_close(a, b, 1e-6)
        assert max_weight_diff(w_a, w_b) <= 1e-6


def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(workdir, files):
    uninterrupted = two_ranks(workdir, files, "barto-tiny", 2)

    def writing_step_4(out: Path) -> bool:
        return (out / "checkpoints" / ".tmp-step_00000004").exists()

    # Each save holds its temporary folder open for 2 s, so the kill lands inside a save.
    resumed = _killed_and_resumed(workdir, files, "resume-mid-save", 2, kill_when=writing_step_4,
                                  extra=["--model.dropout", "0.0"],
                                  extra_env={"SEQ2SEQ_ES_SAVE_DELAY_S": "2"})
    assert not (resumed / "checkpoints" / ".tmp-step_00000004").exists()
    assert_losses_close(step_losses(resumed), step_losses(uninterrupted), 1e-6)
    assert max_weight_diff(final_weights(resumed), final_weights(uninterrupted)) <= 1e-6
    # Steps 3 and 4 were trained twice: before the kill, and again after resuming from step 2.
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    trained = [r["step"] for r in records if "train/loss" in r]
    assert trained.count(3) == 2 and trained.count(4) == 2 and trained.count(2) == 1


@pytest.mark.parametrize("launcher", ["deepspeed", "accelerate:zero2.yaml"])
def test_deepspeed_and_accelerate_launchers_run_two_processes(workdir, files, launcher):
    out = workdir / f"launcher-{launcher.replace(':', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    run(launcher, 2, base_args(files, out, steps=3, batch=2))
    cfg_text = (out / "config.yaml").read_text()
    assert (out / "final" / "model.safetensors").is_file()
    ds = json.loads((out / "deepspeed_config.json").read_text())
    assert ds["train_batch_size"] == 2 * 2  # two ranks saw each other
    if launcher.startswith("accelerate"):
        assert "zero_stage: 2" in cfg_text  # read from the accelerate config file


@pytest.mark.slow  # two torchrun ranks that stop before loading: about 20 s
def test_a_folder_refusal_on_two_ranks_is_said_once(workdir, files):
    # check_fresh_folder and check_resumable ran on every rank, and each printed the refusal
    # (eight GPUs: eight equal lines, then torchrun's summary). Rank 0 says it; the other rank
    # stops with it, in torchrun's error file only.
    out = workdir / "finished"
    out.mkdir()
    (out / "DONE").write_text("{}")
    proc = run("torchrun", 2, base_args(files, out, steps=2), check=False)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines()
            if line.startswith("error: config key 'train.output_dir'")]
    assert len(said) == 1 and "holds a finished run (DONE)" in said[0], proc.stderr[-3000:]


def _decided_worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from seq2seq_es.engine.distributed import DistEnv, decided_by_main
    from seq2seq_es.errors import ConfigError, DataError, Seq2SeqEsError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    env = DistEnv(rank, 2, 0, "127.0.0.1", port, "torchrun")
    seen = []
    for failure in (ConfigError("train.resume", "no"), DataError("damaged", file="f.json"),
                    ValueError("not ours")):
        def decide(failure=failure):
            raise failure
        try:
            decided_by_main(env, decide)
        except (Seq2SeqEsError, ValueError) as exc:  # rank 1: it did not wait for rank 0
            seen.append([type(exc).__name__, str(exc), getattr(exc, "said_elsewhere", False)])
    assert decided_by_main(env, lambda: "held") == ("held" if rank == 0 else None)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_decided_by_main_stops_every_rank_with_rank_0s_failure(tmp_path):
    # A failure of rank 0's other than a ConfigError (a damaged checkpoint file's DataError, an
    # OSError) left the other ranks waiting in the next collective.
    from engine_runs import two_gloo_ranks

    rank0, rank1 = two_gloo_ranks(_decided_worker, tmp_path)
    assert rank0 == [["ConfigError", "config key 'train.resume': no", False],
                     ["DataError", "file f.json: damaged", False],
                     ["ValueError", "not ours", False]]
    # the others stop with it, printed by rank 0 alone
    assert rank1 == [["ConfigError", "config key 'train.resume': no", True],
                     ["Seq2SeqEsError", "file f.json: damaged", True],
                     ["Seq2SeqEsError", "rank 0 failed: ValueError: not ours", True]]
