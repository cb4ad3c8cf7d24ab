"""A resume under another ZeRO stage or precision is refused naming what changed (it failed as
"may be damaged", an AssertionError or an AttributeError, depending on the pair), ZeRO 1 and 2
resume each other, and `seq2seq-es export` carries a checkpoint's weights into a new run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from seq2seq_es.config import RunConfig
from seq2seq_es.demo.synthetic import write_demo_dataset
from seq2seq_es.errors import ConfigError

pytestmark = pytest.mark.slow


def _cfg(tmp_path, out: str, stage: int, steps: int = 4, precision: str = "fp32") -> RunConfig:
    files = write_demo_dataset(tmp_path / "data", train_size=16, validation_size=2)
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    cfg.data.train_file, cfg.data.validation_file = str(files["train"]), str(files["validation"])
    cfg.train.output_dir, cfg.train.max_steps = str(tmp_path / out), steps
    cfg.train.batch_size, cfg.train.log_every, cfg.train.save_every = 4, 1, 2
    cfg.train.precision, cfg.train.export, cfg.train.report_to = precision, False, "none"
    cfg.train.eval_per_epoch, cfg.train.eval_at_end, cfg.train.progress_bar = False, False, False
    cfg.model.dropout, cfg.optim.warmup_steps, cfg.dist.zero_stage = 0.0, 1, stage
    cfg.train.resume = "auto"
    return cfg


def _train(cfg) -> None:
    from seq2seq_es.engine.trainer import Trainer

    with Trainer(cfg) as trainer:
        trainer.train()


def test_another_zero_stage_is_refused_naming_it_and_stages_1_2_resume(tmp_path, one_rank):
    _train(_cfg(tmp_path, "z0", stage=0, steps=2))
    with pytest.raises(ConfigError) as refused:
        _train(_cfg(tmp_path, "z0", stage=2))
    message = str(refused.value)
    assert "train.resume" in message and "dist.zero_stage 0 -> 2" in message
    assert "seq2seq-es export" in message and "step_00000002" in message
    for precision in ("fp32", "bf16"):  # bf16 at stage 1 is DeepSpeed's BF16_Optimizer
        out = f"z2-{precision}"
        _train(_cfg(tmp_path, out, stage=2, steps=2, precision=precision))
        _train(_cfg(tmp_path, out, stage=1, steps=3, precision=precision))  # one layout
        _train(_cfg(tmp_path, out, stage=2, steps=4, precision=precision))  # and back
        records = [json.loads(line) for line in open(tmp_path / out / "metrics.jsonl")]
        # each step trained once: resumed, not started again
        assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4], precision
    with pytest.raises(ConfigError, match="train.precision fp32 -> bf16"):
        _train(_cfg(tmp_path, "z2-fp32", stage=2, steps=6, precision="bf16"))


def test_export_writes_the_checkpoints_weights_as_a_model_folder(tmp_path, one_rank, capsys):
    from transformers import AutoModelForSeq2SeqLM

    from seq2seq_es.cli import main as cli_main

    cfg = _cfg(tmp_path, "run", stage=2, steps=2)
    cfg.train.export, cfg.train.export_dtype = True, "fp32"
    _train(cfg)
    out = tmp_path / "exported"
    assert cli_main(["export", str(tmp_path / "run"), str(out)]) == 0
    assert f"--model.path {out}" in capsys.readouterr().out
    # a README says how to feed it, as final/'s does (there was none)
    card = (out / "README.md").read_text()
    assert "# barto-tiny fine-tuned on mlsum" in card and "step_00000002" in card
    assert "## Inputs" in card and "generation_config.json" in card
    exported = AutoModelForSeq2SeqLM.from_pretrained(out).state_dict()
    # the training's own export of its last step (gathered from the engine, another path)
    final = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "final").state_dict()
    assert exported.keys() == final.keys()
    for name, value in final.items():
        assert torch.equal(exported[name], value), name
    assert cli_main(["export", str(tmp_path / "run"), str(out)]) == 2  # not empty: refused
    assert "is not empty" in capsys.readouterr().err
    # --dtype is the weights' dtype, not only config.json's label (bf16 kept fp32 tensors)
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        half = tmp_path / f"exported-{dtype}"
        assert cli_main(["export", str(tmp_path / "run"), str(half), "--dtype", dtype]) == 0
        tensors = load_file(half / "model.safetensors")
        assert {value.dtype for value in tensors.values()} == {torch_dtype}, dtype
        for name, value in tensors.items():
            assert torch.equal(value, final[name].to(torch_dtype)), (dtype, name)
        assert json.loads((half / "config.json").read_text())["dtype"] == str(torch_dtype)[6:]
    fresh = _cfg(tmp_path, "continued", stage=0, steps=2)
    fresh.model.path = str(out)
    _train(fresh)  # a new run starts from the exported weights
    assert (tmp_path / "continued" / "DONE").exists()


def test_a_zero_stage_refusal_comes_before_loading_and_names_accelerates_file(
        tmp_path, one_rank, monkeypatch):
    # The refusal came after the model, the data and the engine were built (minutes on a real
    # model), and a stage that came from `accelerate launch --config_file zero3.yaml` was named
    # as dist.zero_stage only, a key the user had set nowhere.
    _train(_cfg(tmp_path, "z0", stage=0, steps=2))
    cfg = _cfg(tmp_path, "z0", stage=3)
    # A training file with no usable row: a run that reads its data before the refusal fails
    # on that instead.
    unusable = tmp_path / "data" / "unusable.jsonl"
    unusable.write_text('{"other": "column"}\n')
    cfg.data.train_file = str(unusable)
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "zero_stage")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ConfigError) as refused:
        _train(cfg)
    message = str(refused.value)
    assert "dist.zero_stage 0 -> 3" in message, message
    assert "dist.zero_stage 3 is also what accelerate's config file sets" in message
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")  # the command line's 3 won
    with pytest.raises(ConfigError) as refused:
        _train(_cfg(tmp_path, "z0", stage=3))
    assert "accelerate" not in str(refused.value)
