"""Host read-backs of the training step (issue 12.1): none per micro-batch.

On a GPU every read of a device value (`.item()`, `.tolist()`, `float(t)`, `bool(t)`, ...) makes
the host wait for the device. The CPU cannot show the wait, so these tests count the reads
themselves: Tensor methods that turn a tensor into Python values are patched to count their
calls while the step runs, each call filed under who made it:

- `step`: the step's own code and DeepSpeed's (what issue 12.1 is about);
- `optimizer`: torch.optim's step counters, which live on the host (a CPU tensor per parameter
  unless the optimizer is capturable or fused): no device wait on a GPU either;
- `plan`: the batch plans of seq2seq_es/data (an epoch's order is a CPU tensor, made by a CPU
  generator): host values;
- `model`: transformers' forward, which checks padding masks (`mask.all()`) to decide whether
  SDPA can skip them: real device reads, per forward, that are transformers' own (3 per BART
  forward with 2D masks; 1, the decoder's, with bench.impls.as_4d_mask's prepared mask). BART
  and T5 on `model.attention sdpa` (kernels/read_free_masks.py) make none: asserted below.

The host-side batch bookkeeping (token counts from the CPU labels) goes through numpy, which
never touches a device, and is not counted.
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch

from engine_runs import demo_files, tiny_step_engine
from seq2seq_es.config import RunConfig
from seq2seq_es.engine import distributed as D
from seq2seq_es.engine.step import TrainStep

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("syncs") / "data", train_size=32)



class ReadCounter:
    """Counts calls of the READS methods of torch.Tensor while active, by method name."""

    def __init__(self, monkeypatch):
        self.counts: collections.Counter = collections.Counter()
        self.active = False
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            if self.active:
                self.counts[self.caller()] += 1
            return original(tensor, *args, **kwargs)
        return counted

    @staticmethod
    def caller() -> str:
        files = [frame.filename.replace("\\", "/") for frame in traceback.extract_stack()]
        if any("/transformers/" in f for f in files):
            return "model"
        if any("/torch/optim/" in f for f in files):
            return "optimizer"
        if any("/seq2seq_es/data/" in f for f in files):
            return "plan"
        return "step"


def _setup(files, env, grad_accum: int, on_nan: str = "stop", precision: str = "fp32",
           attention: str = "hf", model: str = "barto-tiny"):
    return tiny_step_engine(files, env, grad_accum=grad_accum, on_nan=on_nan,
                            precision=precision, attention=attention, model_name=model)


def reads_per_step(files, env, monkeypatch, grad_accum: int, **kwargs) -> dict[str, float]:
    """Reads per step by caller, over 3 steps after a first one (nothing read back between)."""
    cfg, engine, batches = _setup(files, env, grad_accum, **kwargs)
    counter = ReadCounter(monkeypatch)
    stepper = TrainStep(engine, env, cfg)
    try:
        stepper.read(stepper(batches[:grad_accum], 0))    # first step: lazy initialisation
        steps = 3
        counter.active = True
        for step in range(1, 1 + steps):
            result = stepper(batches[:grad_accum], step)
        counter.active = False
        values = stepper.read(result)
    finally:
        stepper.close()
    assert values["loss"] > 0 and values["skipped_micro_batches"] == 0
    return {who: counter.counts[who] / steps for who in ("step", "optimizer", "model")}


@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_step_reads_do_not_grow_with_grad_accum(files, one_rank, monkeypatch, on_nan):
    seen = {g: reads_per_step(files, one_rank, monkeypatch, g, on_nan=on_nan) for g in (1, 2, 4)}
    # Before issue 12.1: one read-back per micro-batch (the [non-finite, loss] all-reduce), i.e.
    # grad_accum reads per step, plus the token counts' all-reduce read once per step.
    assert [seen[g]["step"] for g in (1, 2, 4)] == [0, 0, 0], seen
    # The optimizer's host-side step counters: once per optimizer step, whatever grad_accum.
    assert seen[1]["optimizer"] == seen[2]["optimizer"] == seen[4]["optimizer"], seen


@pytest.mark.parametrize("model", ["barto-tiny", "t5s-tiny"])
def test_sdpa_attention_reads_nothing_back_in_the_forward(files, one_rank, monkeypatch, model):
    # kernels/read_free_masks.py builds BART's and T5's masks without transformers' mask.all()
    seen = reads_per_step(files, one_rank, monkeypatch, 2, attention="sdpa", model=model)
    assert seen["model"] == 0 and seen["step"] == 0, seen
    # the same step on transformers' own attention reads every forward's masks back
    assert reads_per_step(files, one_rank, monkeypatch, 2, model=model)["model"] >= 2 * 2


def _meta_forward_backward(model_name: str, attention: str, lean_ce: bool) -> None:
    """The model's training forward and backward on meta tensors (no values: any op whose
    result depends on them, a read or a row selection such as `nonzero`, raises)."""
    from seq2seq_es.bench.shapes import build_model, get_shape
    from seq2seq_es.kernels.bart_attention import apply_bart_attention
    from seq2seq_es.kernels.lean_ce import install_lean_loss
    from seq2seq_es.kernels.t5_attention import apply_t5_attention

    shape = get_shape(model_name)
    model = build_model(shape, torch.device("cpu"), 0, 0.1)
    apply = apply_bart_attention if shape.family == "bart" else apply_t5_attention
    model = apply(model, attention).to("meta")
    ids = torch.empty(3, 40, dtype=torch.long, device="meta")
    batch = {"input_ids": ids, "attention_mask": torch.empty_like(ids),
             "decoder_input_ids": torch.empty(3, 12, dtype=torch.long, device="meta")}
    if lean_ce:
        install_lean_loss(model, chunk_size=16)
        loss = model(**batch, lean_ce_labels=torch.empty_like(batch["decoder_input_ids"]))
    else:
        loss = model(**batch).logits.float().sum()
    loss.backward()


@pytest.mark.parametrize("model_name", ["barto-tiny", "t5s-tiny"])
@pytest.mark.parametrize("lean_ce", [False, True])
def test_on_sdpa_the_model_needs_no_value_of_the_device(model_name, lean_ce):
    """Stronger than counting reads: not only no `.item()` or `bool(mask.all())` in the forward
    and backward on model.attention sdpa (with the lean loss too), but no op whose shape or
    control flow needs a value, which on a GPU would make the host wait as well."""
    _meta_forward_backward(model_name, "sdpa", lean_ce)
    # transformers' own attention reads its padding masks: the check sees that
    with pytest.raises(RuntimeError, match="meta"):
        _meta_forward_backward(model_name, "hf", lean_ce)


@pytest.mark.parametrize("on_nan, reads", [("stop", 2), ("skip", 1)])
def test_one_read_back_per_logging_interval(files, one_rank, monkeypatch, on_nan, reads):
    # stop: the non-finite check (one collective, one read), then the logged values (one read)
    cfg, engine, batches = _setup(files, one_rank, 2, on_nan=on_nan)
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        for step in range(3):
            result = stepper(batches[:2], step)
        counter = ReadCounter(monkeypatch)
        counter.active = True
        values = stepper.read(result)
        counter.active = False
    finally:
        stepper.close()
    assert counter.counts == {"step": reads}
    assert values["window_tokens"] > 3 * values["tokens"] - 1  # the three steps' tokens


def test_fp16_reads_the_loss_scale_once_per_step_whatever_grad_accum(files, one_rank, monkeypatch):
    # ZeRO 0 fp16 is torch autocast with a GradScaler whose scale lives on the device: a skipped
    # optimizer step must be seen before the next one (the schedule is taken back), so fp16 reads
    # it per step (twice, optim.fp16_step_skipped and TrainStep), not per micro-batch; the
    # GradScaler's own step reads its inf flag once (torch.amp).
    seen = {g: reads_per_step(files, one_rank, monkeypatch, g, precision="fp16")["step"]
            for g in (1, 2, 4)}
    assert seen[1] == seen[2] == seen[4] == 3, seen


def _run_config(files, out) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    cfg.data.train_file, cfg.data.validation_file = files["train"], files["validation"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 32
    cfg.train.output_dir = str(out)
    cfg.train.precision, cfg.train.batch_size, cfg.train.max_steps = "fp32", 2, 9
    cfg.train.log_every = 100
    cfg.train.eval_per_epoch = cfg.train.eval_at_end = cfg.train.export = False
    cfg.train.report_to, cfg.train.progress_bar, cfg.train.keep_last = "none", False, 10
    cfg.optim.warmup_steps = 1
    cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens = 1, 6, 0
    return cfg


def test_a_deferred_non_finite_check_still_runs_before_the_next_save(files, one_rank, tmp_path,
                                                                    monkeypatch):
    # on_nan=stop reads its flag once per logging interval (100 steps here) and before every
    # save: the NaN of step 3 stops the run at step 3's save, and no checkpoint holds its weights.
    from seq2seq_es.engine import trainer

    original_get_engine = trainer.get_engine

    def poisoning_get_engine(*args, **kwargs):
        built = original_get_engine(*args, **kwargs)
        calls = []

        def hook(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) == 3 else output
        built[0].module.lm_head.register_forward_hook(hook)
        return built

    monkeypatch.setattr(trainer, "get_engine", poisoning_get_engine)
    cfg = _run_config(files, tmp_path / "run")
    cfg.train.save_every = 1
    with pytest.raises(trainer.NonFiniteLoss, match="at step 3, micro-batch 0"):
        trainer.train(cfg)
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert saved == ["step_00000001", "step_00000002"]


def test_stop_check_every_k_steps_and_time_saves_land_on_those_steps(files, one_rank, tmp_path,
                                                                     monkeypatch):
    from seq2seq_es.engine import trainer

    polled = {}
    original = trainer.Trainer.poll_ranks

    def noted_poll(self):
        polled[self.state.step] = original(self)
        return polled[self.state.step]

    monkeypatch.setattr(trainer.Trainer, "poll_ranks", noted_poll)
    saves = []
    original_save = trainer.Checkpointer.save

    def noted_save(self, engine, state):
        saves.append(state.step)
        return original_save(self, engine, state)

    monkeypatch.setattr(trainer.Checkpointer, "save", noted_save)
    cfg = _run_config(files, tmp_path / "run")
    cfg.train.stop_check_every = 4
    cfg.train.save_every_min = 1e-9       # a time-based save is due at every check
    trainer.train(cfg)
    # steps 4 and 8 check (stop signal, save due), one process at once; after step 9 the loop
    # does not (the run saves anyway)
    assert {step: flags for step, flags in polled.items() if any(flags)} == {
        4: (0.0, 1.0), 8: (0.0, 1.0)}, polled
    assert saves == [4, 8, 9]


@pytest.mark.slow  # two processes
def test_on_several_ranks_the_agreement_is_read_a_step_later(files, tmp_path):
    # Read at once, the agreement made the host wait for the step's kernels every step: begun
    # after steps 4 and 8, it is read after steps 5 and 9, on both ranks alike (a save is
    # collective). Step 9 is the last: its save is the end's.
    from engine_runs import base_args, run

    out = tmp_path / "two"
    run("torchrun", 2, base_args(files, out, steps=9, batch=2, extra=[
        "--train.stop_check_every", "4", "--train.save_every_min", "1e-9",
        "--train.keep_last", "10", "--train.log_every", "100", "--train.eval_per_epoch", "false"]))
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert saved == ["step_00000005", "step_00000009"], saved
    # The first validation (step 4) is a new best, saved at once: the clock's save asked for
    # at step 4 is then done, not repeated at step 5 (a whole checkpoint more)
    out = tmp_path / "best"
    run("torchrun", 2, base_args(files, out, steps=6, batch=2, extra=[
        "--train.stop_check_every", "4", "--train.save_every_min", "1e-9",
        "--train.keep_last", "10", "--train.log_every", "100", "--train.eval_per_epoch", "false",
        "--train.eval_every", "4"]))
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert saved == ["step_00000004", "step_00000006"], saved


@pytest.mark.parametrize("stage", [1, 2])
def test_skip_zeroes_the_bad_micro_batch_under_zero_1_and_2(files, one_rank, stage, monkeypatch):
    # on_nan=skip without a read-back: gradient hooks replace the NaN micro-batch's gradients by
    # zeros before DeepSpeed accumulates (and under ZeRO 1-2 partitions) them. The step with a
    # NaN first micro-batch must train on the healthy second one alike at every stage.
    import deepspeed.runtime.torch_autocast as ds_autocast

    from seq2seq_es.engine.loss import token_ce_sum
    from seq2seq_es.engine.step import train_step

    # DeepSpeed remembers in a module global that an engine of this process used torch autocast
    # (the fp16 test's), and ZeRO 1-2 engines built later then scale as if in fp16.
    monkeypatch.setattr(ds_autocast, "TORCH_AUTOCAST_INITIALIZED", False)

    def poisoned_step(stage_):
        cfg, engine, batches = tiny_step_engine(
            files, one_rank, grad_accum=2, on_nan="skip", dropout=0.0, examples=8,
            total_steps=10, zero_stage=stage_, weight_decay=0.0)
        batches = batches[:2]
        before = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        with torch.no_grad():  # the kept micro-batch's mean loss: what the step must log
            kept = dict(batches[1])
            labels = kept.pop("labels")
            kept_loss = (token_ce_sum(engine.module(**kept).logits, labels)
                         / (labels != -100).sum()).item()
        calls = []

        def hook(module, inputs, output):  # the first micro-batch's loss is NaN
            calls.append(1)
            return output * float("nan") if len(calls) == 1 else output
        handle = engine.module.lm_head.register_forward_hook(hook)
        result = train_step(engine, batches, one_rank, cfg, step=0)
        handle.remove()
        after = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        assert result["skipped_micro_batches"] == 1
        assert result["loss"] == pytest.approx(kept_loss, rel=1e-5)  # not diluted by the NaN's tokens
        assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
        assert any(not torch.equal(before[k], after[k]) for k in before)
        return after

    zero0, staged = poisoned_step(0), poisoned_step(stage)
    diffs = {k: (zero0[k].float() - staged[k].float()).abs().max().item() for k in zero0}
    assert max(diffs.values()) < 1e-6, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]


class _StubEngine:
    """What TrainStep's constructor reads of a DeepSpeed engine (fp32, ZeRO 0)."""

    module = torch.nn.Linear(2, 2)

    def fp16_enabled(self):
        return False

    def zero_optimization(self):
        return 0


def _stepper_of_rank(rank: int, world_size: int = 2) -> TrainStep:
    env = D.DistEnv(rank, world_size, rank, "127.0.0.1", 0, "none")
    return TrainStep(_StubEngine(), env, RunConfig())


def test_a_resumed_loss_window_is_restored_once_over_the_ranks():
    # The checkpoint holds the window's sums over all ranks: restored on every rank, the
    # first loss logged after a multi-rank resume counted the saved cross-entropy W times.
    sums = [30.0, 4.0, 100.0, 6.0, 3.0, 2.5]   # ce, skipped tokens, targets, norm sum/steps/max
    ranks = [_stepper_of_rank(r) for r in range(2)]
    for stepper in ranks:
        stepper.restore_loss_window(sums)
    assert ranks[0].loss_window.tolist() == [30.0, 4.0, 100.0]
    assert ranks[1].loss_window.tolist() == [0.0, 0.0, 100.0]
    # what read() all-reduces: the saved sums, once
    assert (ranks[0].loss_window[:2] + ranks[1].loss_window[:2]).tolist() == [30.0, 4.0]
    for stepper in ranks:
        assert stepper.grad_norm_window.tolist() == [6.0, 3.0, 2.5]


def test_host_token_counts_are_targets_unpadded_sources_and_padded_slots():
    # The logged tokens/padded_tokens (throughput and padding waste) come from these counts:
    # sources are counted by their attention mask, padding by every slot of both tensors.
    from seq2seq_es.engine.step import host_token_counts

    batch = {"input_ids": torch.tensor([[5, 6, 1, 1], [7, 8, 9, 10]]),
             "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]),
             "labels": torch.tensor([[5, 6, -100], [7, 8, 9]])}
    second = {"input_ids": torch.tensor([[3, 4]]), "attention_mask": torch.tensor([[1, 0]]),
              "labels": torch.tensor([[2, -100, -100, -100]])}
    assert host_token_counts([batch]) == ([5.0, 6.0, 14.0], [5.0])
    # summed over micro-batches; each one's target tokens listed for on_nan=skip
    assert host_token_counts([batch, second]) == ([6.0, 7.0, 20.0], [5.0, 1.0])


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_step_never_waits_for_the_device(files, one_rank, monkeypatch, grad_accum):
    # DeepSpeed's throughput timer (on and synchronised by default) synchronised the device at
    # each forward and each engine.step(): twice per micro-batch, emptying the GPU's queue. Its
    # accelerator's synchronize() is what it calls (torch.cuda.synchronize on a GPU).
    from deepspeed.accelerator import get_accelerator

    accelerator = type(get_accelerator())
    waits = []
    original = accelerator.synchronize
    monkeypatch.setattr(accelerator, "synchronize",
                        lambda self, *args, **kwargs: (waits.append(1), original(self, *args, **kwargs))[1])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args, **kwargs: waits.append(1))
    cfg, engine, batches = _setup(files, one_rank, grad_accum)
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        stepper(batches[:grad_accum], 0)
        waits.clear()
        for step in range(1, 5):  # DeepSpeed's timer starts synchronising at its third step
            stepper(batches[:grad_accum], step)
    finally:
        stepper.close()
    assert waits == []


def test_one_process_agrees_with_itself_without_the_device(one_rank):
    # The trainer polls the stop signal and the save clock every step: on one process the values
    # are its own, and a round trip through the device (a GPU wait per step) is skipped. A meta
    # device holds no values, so any tensor made there would fail to be read.
    meta = torch.device("meta")
    assert D.all_reduce_max([1.0, 0.0], meta) == [1.0, 0.0]
    assert D.all_reduce_max(True, meta) == 1.0
    assert D.all_reduce_sum([2, 3.5], meta) == [2.0, 3.5]


def test_the_training_loop_reads_nothing_back_per_step(files, one_rank, tmp_path, monkeypatch):
    # Reads of the whole run by 9 and by 18 steps (one logging interval, no validation, one save
    # at the end): the loop around the step adds none per step (it read the stop poll's tensor).
    from seq2seq_es.engine import trainer

    def reads(steps: int) -> int:
        cfg = _run_config(files, tmp_path / f"run{steps}")
        cfg.train.max_steps = steps
        counter = ReadCounter(monkeypatch)
        counter.active = True
        trainer.train(cfg)
        counter.active = False
        monkeypatch.undo()
        return counter.counts["step"]

    assert reads(18) == reads(9) > 0


@pytest.mark.parametrize("model", ["barto-tiny", "t5s-tiny"])
def test_the_training_forward_fills_no_decoder_cache(files, one_rank, model):
    # transformers fills a key/value cache per decoder layer whenever use_cache is on (the
    # config's default) and no labels are passed: training never reads it, and on a GPU its
    # copies cost launches every forward. The step passes use_cache=False.
    cfg, engine, batches = _setup(files, one_rank, 1, model=model)
    caches = []
    handle = engine.module.register_forward_hook(
        lambda module, inputs, output: caches.append(output.past_key_values))
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        stepper(batches[:1], 0)
    finally:
        stepper.close()
        handle.remove()
    assert caches == [None]
