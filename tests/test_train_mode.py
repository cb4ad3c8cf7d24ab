"""Training runs the model in train() mode (dropout on), also after a validation.

transformers' from_pretrained returns a model in eval() mode; until the Trainer switched it,
BART, T5 and LED fine-tuned without dropout (the paper's runs use 0.1).
"""

from __future__ import annotations

import pytest
import torch

from engine_runs import demo_files, step_losses
from seq2seq_es.config import RunConfig
from seq2seq_es.engine.trainer import Trainer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("mode") / "data", train_size=16)



def _run(files, out, model: str, dropout: float) -> list[tuple[bool, bool]]:
    """Train 3 steps with a validation after each; (grad enabled, module.training) per forward."""
    cfg = RunConfig()
    cfg.model.name, cfg.data.task, cfg.model.dropout = model, "mlsum", dropout
    cfg.data.train_file, cfg.data.validation_file = files["train"], files["validation"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 64
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.batch_size = str(out), 3, 2
    cfg.train.precision, cfg.train.log_every, cfg.train.eval_every = "fp32", 1, 1
    cfg.train.eval_per_epoch, cfg.train.eval_at_end, cfg.train.export = False, False, False
    cfg.train.report_to, cfg.train.progress_bar = "none", False
    cfg.optim.warmup_steps = 1
    cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens = 1, 4, 0
    forwards = []
    with Trainer(cfg) as trainer:
        trainer.engine.module.register_forward_pre_hook(
            lambda module, args: forwards.append((torch.is_grad_enabled(), module.training)))
        trainer.train()
    return forwards


@pytest.mark.slow
@pytest.mark.parametrize("model", ["barto-tiny", "t5s-tiny", "ledo-tiny", "beto2beto-tiny"])
def test_training_forwards_run_in_train_mode_and_apply_dropout(files, one_rank, tmp_path, model):
    forwards = _run(files, tmp_path / "p3", model, 0.3)
    training = [mode for grad, mode in forwards if grad]
    assert len(training) == 3 and all(training), forwards
    # validations ran between the steps, in eval mode
    assert any(not grad and not mode for grad, mode in forwards)
    _run(files, tmp_path / "p0", model, 0.0)
    # Step 1: the same weights and batch; only the dropout probability differs.
    with_dropout, without = step_losses(tmp_path / "p3")[1], step_losses(tmp_path / "p0")[1]
    assert abs(with_dropout - without) > 1e-4 * abs(without), (with_dropout, without)
