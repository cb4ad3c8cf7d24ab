"""ZeRO-Offload (dist.offload_optimizer) trains: DeepSpeed refused our AdamW under offload until
zero_force_ds_cpu_optimizer was set false, so every offload run failed after loading its data."""

from __future__ import annotations

import json

import pytest

from seq2seq_es.config import RunConfig
from seq2seq_es.demo.synthetic import write_demo_dataset

pytestmark = pytest.mark.slow


def _losses(tmp_path, one_rank, offload: bool) -> dict[int, float]:
    from seq2seq_es.engine.trainer import Trainer

    files = write_demo_dataset(tmp_path / "data", train_size=16, validation_size=2)
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    cfg.data.train_file, cfg.data.validation_file = str(files["train"]), str(files["validation"])
    cfg.train.output_dir = str(tmp_path / ("offload" if offload else "plain"))
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.log_every = 3, 4, 1
    cfg.train.precision, cfg.train.export, cfg.train.report_to = "fp32", False, "none"
    cfg.train.eval_per_epoch, cfg.train.eval_at_end, cfg.train.progress_bar = False, False, False
    cfg.model.dropout, cfg.optim.warmup_steps = 0.0, 1
    cfg.dist.zero_stage, cfg.dist.offload_optimizer = 2, offload
    with Trainer(cfg) as trainer:
        trainer.train()
    records = [json.loads(line) for line in open(f"{cfg.train.output_dir}/metrics.jsonl")]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def test_offloaded_optimizer_trains_as_the_gpu_resident_one(tmp_path, one_rank):
    plain = _losses(tmp_path, one_rank, offload=False)
    offloaded = _losses(tmp_path, one_rank, offload=True)
    assert sorted(offloaded) == [1, 2, 3]
    for step, loss in plain.items():
        assert offloaded[step] == pytest.approx(loss, rel=1e-5), step
