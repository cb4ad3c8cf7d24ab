"""Mixed precision: what train.precision resolves to, the DeepSpeed config it
writes per ZeRO stage, fp16 dynamic loss scaling (the real ZeRO-0 path, and DeepSpeed's fp16 under
ZeRO 2-3 with its CPU accelerator told fp16 works), gradient accumulation in fp32 under bf16, and
final/ in train.export_dtype.

What runs where: torch autocasts in float16 on this CPU and DeepSpeed builds its GradScaler for
it, so fp16 at ZeRO 0 runs for real. DeepSpeed's own fp16 mode (ZeRO 1-3) refuses a CPU without
mkldnn fp16; the tests that pretend otherwise run its optimizer code on fp16 CPU kernels.
seq2seq_es.bench.gpu_precision runs the same on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_runs import REPO, demo_files, free_port
from seq2seq_es.config import RunConfig
from seq2seq_es.engine import distributed as D
from seq2seq_es.engine import optim
from seq2seq_es.errors import ConfigError


def make_cfg(model: str = "barto-tiny", precision: str = "fp16", stage: int = 0,
             **dist) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = model, "mlsum"
    cfg.train.precision, cfg.dist.zero_stage = precision, stage
    for key, value in dist.items():
        setattr(cfg.dist, key, value)
    return cfg


def fake_gpu(monkeypatch, native_bf16: bool, name: str = "Tesla V100-SXM2-32GB") -> None:
    """torch.cuda as on a GPU; bf16 'supported' only through emulation unless native_bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bf16 or including_emulation)


# ---------------------------------------------------------------------------------------------
# What precision a run trains in, and the line it prints


def test_auto_is_fp32_on_cpu():
    assert optim.resolve_precision(make_cfg(precision="auto")) == "fp32"
    assert optim.precision_report(make_cfg(precision="auto")) == \
        "precision: fp32 (train.precision auto: no GPU)"


def test_auto_is_bf16_only_where_the_gpu_computes_in_bf16(monkeypatch):
    fake_gpu(monkeypatch, native_bf16=True, name="NVIDIA H200")
    assert optim.resolve_precision(make_cfg(precision="auto")) == "bf16"
    assert optim.precision_report(make_cfg(precision="auto")) == \
        "precision: bf16 (train.precision auto: NVIDIA H200 computes in bf16)"
    # A V100 or T4 'supports' bf16 by emulation only (torch's default check says yes): fp16.
    fake_gpu(monkeypatch, native_bf16=False)
    assert torch.cuda.is_bf16_supported()
    assert optim.resolve_precision(make_cfg(precision="auto")) == "fp16"
    line = optim.precision_report(make_cfg(precision="auto"))
    assert line == ("precision: fp16 (train.precision auto: Tesla V100-SXM2-32GB has no native "
                    "bf16; fp16 with dynamic loss scaling)")
    line = optim.precision_report(make_cfg(precision="bf16"))
    assert line.startswith("precision: bf16 (train.precision bf16); WARNING") and "emulated" in line


def test_bf16_asked_for_on_a_cpu_says_it_is_slow_there():
    # configs/runs/*.yaml (bf16, GPU recipes) copied for a try on a CPU trained at 346 tokens/s,
    # against thousands in fp32, with only "precision: bf16 (train.precision bf16)" said.
    assert not torch.cuda.is_available()  # the CPU machine this suite runs on
    line = optim.precision_report(make_cfg(precision="bf16"))
    assert line == ("precision: bf16 (train.precision bf16); note: on CPUs bf16 is much slower "
                    "than fp32 unless the CPU has AMX: --train.precision auto trains in fp32 "
                    "here")
    assert optim.precision_report(make_cfg(precision="fp32")) == (
        "precision: fp32 (train.precision fp32)")


def test_t5_never_gets_fp16_from_auto_and_is_warned_when_fp16_is_asked_for(monkeypatch):
    fake_gpu(monkeypatch, native_bf16=False)
    cfg = make_cfg("t5s-tiny", precision="auto")
    assert optim.resolve_precision(cfg) == "fp32"
    assert "T5 models overflow in fp16" in optim.precision_report(cfg)
    cfg.train.precision = "fp16"  # asked for explicitly: trained as asked, with a warning
    assert optim.resolve_precision(cfg) == "fp16"
    line = optim.precision_report(cfg)
    assert "WARNING: T5 models overflow in fp16" in line and "bf16" in line
    assert "WARNING" not in optim.precision_report(make_cfg("barto-tiny", precision="fp16"))


# ---------------------------------------------------------------------------------------------
# The DeepSpeed config per stage, as DeepSpeed itself reads it


def parsed(cfg: RunConfig):
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig(optim.deepspeed_config(cfg, world_size=1))


def test_fp16_is_autocast_with_a_grad_scaler_at_zero0_and_deepspeed_fp16_under_zero():
    ds = parsed(make_cfg(stage=0))
    assert ds.torch_autocast_enabled and ds.torch_autocast_dtype == torch.float16
    assert not ds.float16_config.enabled and not ds.bfloat16_config.enabled
    assert ds.grad_accum_dtype == "fp32"
    for stage in (1, 2, 3):
        written = optim.deepspeed_config(make_cfg(stage=stage), 1)
        assert written["fp16"] == optim.FP16_DYNAMIC and written["fp16"] is not optim.FP16_DYNAMIC
        ds = parsed(make_cfg(stage=stage))
        assert ds.float16_config.enabled and not ds.torch_autocast_enabled
        assert ds.float16_config.loss_scale == 0  # dynamic
        assert ds.float16_config.initial_dynamic_scale() == 2 ** 16
        assert not ds.bfloat16_config.enabled and ds.grad_accum_dtype == "fp16"


def test_bf16_under_zero_accumulates_gradients_in_fp32_unless_told_bf16():
    for stage in (1, 2, 3):
        ds = parsed(make_cfg(precision="bf16", stage=stage))
        assert ds.bfloat16_config.enabled and ds.grad_accum_dtype == "fp32"
        ds = parsed(make_cfg(precision="bf16", stage=stage, grad_accum_dtype="bf16"))
        assert ds.grad_accum_dtype == "bf16"
    # ZeRO 0 trains bf16 as autocast over fp32 weights: fp32 gradients whatever the key says
    ds = parsed(make_cfg(precision="bf16", stage=0, grad_accum_dtype="bf16"))
    assert ds.torch_autocast_dtype == torch.bfloat16 and ds.grad_accum_dtype == "fp32"
    for stage in range(4):
        assert parsed(make_cfg(precision="fp32", stage=stage)).grad_accum_dtype == "fp32"


# ---------------------------------------------------------------------------------------------
# Training steps in fp16 on the CPU


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("precision") / "data", train_size=16)



def engine_and_batches(files, env, precision: str, stage: int, lr: float = 1e-3):
    from seq2seq_es.engine.builders import get_collator, get_engine, get_model, get_split
    from seq2seq_es.tasks import get_task

    cfg = make_cfg(precision=precision, stage=stage)
    cfg.data.train_file = files["train"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 32
    cfg.train.batch_size, cfg.optim.lr, cfg.optim.weight_decay = 2, lr, 0.0
    model, tokenizer, spec = get_model(cfg)
    split = get_split(cfg, get_task("mlsum"), tokenizer, model, "train", 4, lambda m: None)
    collate = get_collator(cfg, spec, tokenizer, model)
    batches = [collate([split.tokenized[i] for i in (0, 1)]),
               collate([split.tokenized[i] for i in (2, 3)])]
    engine, scheduler, _ = get_engine(model, cfg, env, total_steps=20)
    return cfg, engine, scheduler, batches


def overflow_next_backward(engine):
    """Make the next backward's gradients infinite (as fp16 gradients overflowing would)."""
    weight = engine.module.get_input_embeddings().weight
    handle = None

    def hook(grad):
        handle.remove()
        return grad * float("inf")
    handle = weight.register_hook(hook)


def weights(engine) -> dict[str, torch.Tensor]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()),
                                           enabled=engine.zero_optimization_stage() == 3):
        return {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()}


def check_loss_scaling(engine, scheduler, cfg, batches, env, first_scale: float,
                       scale_after_skip: float) -> None:
    from seq2seq_es.engine.step import train_step

    result = train_step(engine, batches[:1], env, cfg, step=0)
    assert result["loss_scale"] == first_scale and result["overflow_skipped"] == 0
    lr = scheduler.get_last_lr()[0]
    before = weights(engine)
    overflow_next_backward(engine)
    result = train_step(engine, batches[1:], env, cfg, step=1)
    assert result["overflow_skipped"] == 1 and result["loss_scale"] == scale_after_skip
    assert engine.skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in weights(engine).items())  # no update
    assert scheduler.get_last_lr()[0] == lr  # and no schedule step
    assert all(g["lr"] == lr for g in engine.optimizer.param_groups)
    losses = [train_step(engine, batches[:1], env, cfg, step=2 + k)["loss"] for k in range(6)]
    assert all(loss == loss and abs(loss) != float("inf") for loss in losses)
    assert losses[-1] < losses[0], losses
    assert engine.skipped_steps == 1


def test_fp16_at_zero0_runs_autocast_and_skips_overflowing_steps(files, one_rank, capsys):
    cfg, engine, scheduler, batches = engine_and_batches(files, one_rank, "fp16", 0)
    assert "precision: fp16 (train.precision fp16)" in capsys.readouterr().out
    assert engine.torch_autocast_z0_gradscaler is not None
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())
    seen = []
    handle = engine.module.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    engine(**{k: v for k, v in batches[0].items() if k != "labels"})
    handle.remove()
    assert seen == [torch.float16]  # the matmuls run in fp16 under autocast
    # GradScaler: 2^16 at first, halved by an overflow (a skipped step)
    check_loss_scaling(engine, scheduler, cfg, batches, one_rank, 2.0 ** 16, 2.0 ** 15)


def test_fp16_loss_scale_at_zero0_is_saved_with_the_checkpoint(files, one_rank, tmp_path):
    """DeepSpeed leaves its ZeRO-0 GradScaler out of checkpoints; the schedule's state carries
    it, so a resumed run goes on with the scale (and growth count) it had."""
    from seq2seq_es.engine.step import train_step

    cfg, engine, _, batches = engine_and_batches(files, one_rank, "fp16", 0)
    overflow_next_backward(engine)
    assert train_step(engine, batches[:1], one_rank, cfg, step=0)["overflow_skipped"] == 1
    train_step(engine, batches[1:], one_rank, cfg, step=1)
    saved = engine.torch_autocast_z0_gradscaler.state_dict()
    assert saved["scale"] == 2.0 ** 15 and saved["_growth_tracker"] == 1
    engine.save_checkpoint(str(tmp_path), tag="step_2")
    _, resumed, _, _ = engine_and_batches(files, one_rank, "fp16", 0)
    assert resumed.torch_autocast_z0_gradscaler.get_scale() == 2.0 ** 16
    resumed.load_checkpoint(str(tmp_path), tag="step_2")
    assert resumed.torch_autocast_z0_gradscaler.state_dict() == saved
    assert resumed.lr_scheduler.get_last_lr() == engine.lr_scheduler.get_last_lr()
    # an fp32 run's checkpoint (no scaler) still loads into an fp16 one, and the other way round
    cfg32, plain, _, _ = engine_and_batches(files, one_rank, "fp32", 0)
    plain.load_checkpoint(str(tmp_path), tag="step_2")
    plain.save_checkpoint(str(tmp_path), tag="fp32")
    resumed.load_checkpoint(str(tmp_path), tag="fp32")
    assert resumed.torch_autocast_z0_gradscaler.state_dict() == saved


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_fp16_under_zero_skips_overflowing_steps(files, one_rank, monkeypatch, stage):
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)
    cfg, engine, scheduler, batches = engine_and_batches(files, one_rank, "fp16", stage)
    assert engine.fp16_enabled() and not engine.torch_autocast_enabled()
    assert next(engine.module.parameters()).dtype == torch.float16
    # DeepSpeed's scaler: 2^16, kept through the first overflow (hysteresis 2), step skipped
    check_loss_scaling(engine, scheduler, cfg, batches, one_rank, 2.0 ** 16, 2.0 ** 16)


def test_fp16_under_zero_is_refused_where_deepspeed_has_no_fp16(files, one_rank):
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().is_fp16_supported():
        pytest.skip("this machine's DeepSpeed accelerator supports fp16")
    with pytest.raises(ConfigError, match="train.precision.*fp16 under ZeRO stage 2"):
        engine_and_batches(files, one_rank, "fp16", 2)


# ---------------------------------------------------------------------------------------------
# final/ in train.export_dtype


def _export_worker(rank: int, port: int, files: dict, out: str) -> None:
    """Two ranks train bf16 one step under ZeRO 1, 2 and 3 (gradients accumulated in fp32; ZeRO-1
    is then DeepSpeed's BF16_Optimizer), save a DeepSpeed checkpoint, export final/ in fp32 and
    in bf16, train on, load the checkpoint back and export again."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from seq2seq_es.engine.export import export_hf
    from seq2seq_es.engine.step import train_step
    from seq2seq_es.process_exit import leave
    from seq2seq_es.models import build_generation_config, get_model_spec, load_model_and_tokenizer

    env = D.read_env()
    D.init(env, "gloo")
    for stage in (1, 2, 3):
        cfg, engine, _, batches = engine_and_batches(files, env, "bf16", stage, lr=1e-2)
        train_step(engine, batches[rank:rank + 1], env, cfg, step=0)
        folder = Path(out, f"zero{stage}")
        engine.save_checkpoint(str(folder / "checkpoint"), tag="step_1")
        _, tokenizer = load_model_and_tokenizer("barto-tiny")
        generation = build_generation_config(get_model_spec("barto-tiny"), tokenizer,
                                             num_beams=1, max_new_tokens=4)
        for dtype in ("fp32", "bf16"):
            export_hf(engine, tokenizer, generation, folder / f"final_{dtype}", stage, env,
                      dtype=dtype)
        if rank == 0:
            module = {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()
                      if v.numel()}
            torch.save(module, folder / "module_bf16.pt")
        # Another step moves the weights; loading the checkpoint brings the masters back.
        train_step(engine, batches[1 - rank:2 - rank], env, cfg, step=1)
        engine.load_checkpoint(str(folder / "checkpoint"), tag="step_1")
        export_hf(engine, tokenizer, generation, folder / "final_reloaded", stage, env)
    D.close()
    leave(0)  # as the package's processes end: no interpreter teardown beside gloo's threads


@pytest.mark.slow
def test_export_dtype_is_what_was_asked_and_fp32_keeps_the_master_weights(files, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM

    torch.multiprocessing.spawn(_export_worker, args=(free_port(), files, str(tmp_path)),
                                nprocs=2)
    for stage in (1, 2, 3):
        folder = tmp_path / f"zero{stage}"
        masters = get_fp32_state_dict_from_zero_checkpoint(str(folder / "checkpoint"),
                                                           tag="step_1")
        fp32 = load_file(folder / "final_fp32" / "model.safetensors")
        bf16 = load_file(folder / "final_bf16" / "model.safetensors")
        assert {v.dtype for v in fp32.values() if v.is_floating_point()} == {torch.float32}
        assert {v.dtype for v in bf16.values() if v.is_floating_point()} == {torch.bfloat16}
        for sub, name in (("final_fp32", "float32"), ("final_bf16", "bfloat16")):
            assert json.loads((folder / sub / "config.json").read_text())["dtype"] == name
            # plain transformers loads it in that dtype (from_pretrained's dtype is "auto")
            loaded = AutoModelForSeq2SeqLM.from_pretrained(folder / sub)
            assert loaded.dtype == getattr(torch, name), (stage, sub)
        # fp32: the optimizer's fp32 master weights, exactly; not the module's bf16 copy widened
        assert set(fp32) <= set(masters), stage
        assert all(torch.equal(fp32[k], masters[k]) for k in fp32), stage
        module = torch.load(folder / "module_bf16.pt")
        assert any(not torch.equal(fp32[k], module[k]) for k in fp32 if k in module), stage
        # bf16: the same masters rounded once
        assert all(torch.equal(bf16[k], masters[k].to(torch.bfloat16)) for k in bf16), stage
        reloaded = load_file(folder / "final_reloaded" / "model.safetensors")
        assert all(torch.equal(reloaded[k], fp32[k]) for k in fp32), stage


def test_export_of_an_fp32_zero0_run_in_bf16_and_fp32(files, one_rank, tmp_path):
    from safetensors.torch import load_file

    from seq2seq_es.engine.export import export_hf
    from seq2seq_es.engine.step import train_step
    from seq2seq_es.models import build_generation_config, get_model_spec, load_model_and_tokenizer

    cfg, engine, _, batches = engine_and_batches(files, one_rank, "fp32", 0)
    train_step(engine, batches[:1], one_rank, cfg, step=0)
    _, tokenizer = load_model_and_tokenizer("barto-tiny")
    generation = build_generation_config(get_model_spec("barto-tiny"), tokenizer, num_beams=1,
                                         max_new_tokens=4)
    trained = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        export_hf(engine, tokenizer, generation, tmp_path / dtype, 0, one_rank, dtype=dtype)
        saved = load_file(tmp_path / dtype / "model.safetensors")
        assert all(v.dtype == torch_dtype for v in saved.values() if v.is_floating_point())
        assert all(torch.equal(v, trained[k].to(torch_dtype)) for k, v in saved.items())
        # config.json names the export's dtype, so plain transformers loads it as written ...
        from transformers import AutoModelForSeq2SeqLM
        assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / dtype).dtype == torch_dtype
        # ... and this package trains and evaluates on fp32 weights (upcast exactly)
        model, _ = load_model_and_tokenizer("barto-tiny", path=str(tmp_path / dtype))
        assert model.dtype == torch.float32
        assert all(torch.equal(v, saved[k].float()) for k, v in model.state_dict().items()
                   if k in saved)


# ---------------------------------------------------------------------------------------------
# The GPU check script, end to end on the CPU


@pytest.mark.slow
def test_gpu_precision_script_runs_end_to_end_on_the_cpu(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "seq2seq_es.bench.gpu_precision", str(tmp_path),
         "--cpu-smoke", "--steps", "8"],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_precision.json").read_text())
    assert report["ok"], report
    assert [(r["precision"], r["zero_stage"]) for r in report["runs"]] == [
        ("fp16", 0), ("fp16", 2), ("fp16", 3)]
    for run in report["runs"]:
        assert run["status"] == "ok" and len(run["losses"]) == 8
        assert run["loss_scales"][0] == 2.0 ** 16
        assert run["export_dtypes"] == {"fp32": "torch.float32", "bf16": "torch.bfloat16"}
    assert "| fp16 | 0 |" in (tmp_path / "gpu_precision.md").read_text()


def test_grad_accum_dtype_set_where_it_is_not_read_is_noted():
    # It applies to bf16 under ZeRO 1-3 only; elsewhere it was taken without a word.
    line = optim.precision_report(make_cfg(precision="auto", stage=2, grad_accum_dtype="bf16"))
    assert line == ("precision: fp32 (train.precision auto: no GPU); note: dist.grad_accum_dtype "
                    "bf16 is not read (gradients accumulate in fp32: it applies to bf16 under "
                    "ZeRO 1-3)")
    assert "grad_accum_dtype" not in optim.precision_report(make_cfg(
        precision="bf16", stage=2, grad_accum_dtype="bf16"))
    assert "note" not in optim.precision_report(make_cfg(precision="fp32", stage=2))
