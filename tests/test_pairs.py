"""Every model x task pair of the paper's runs, end to end on tiny models and the fixtures:
config composition, task loading, tokenization, collation, a forward and backward pass with a
finite loss, and a short generation that decodes to text.
"""

from __future__ import annotations

import math

import pytest
import torch

from fixtures import fixture_files
from seq2seq_es.config import RunConfig, validate
from seq2seq_es.engine.builders import get_collator, get_generation_config, get_model, get_split
from seq2seq_es.engine.evaluation import clean_prediction
from seq2seq_es.engine.loss import token_ce_sum
from seq2seq_es.slurm.paper_grid import paper_pairs
from seq2seq_es.tasks import get_task

PAIRS = paper_pairs()


def test_the_matrix_is_the_papers():
    assert len(PAIRS) == 6 * 8 + 4 * 4 + 2
    assert ("ledo", "eurlexsum") in PAIRS and ("ledo", "mlsum") not in PAIRS
    assert ("mbertshare", "wmt13-en-es") in PAIRS and ("beto2beto", "wmt13-en-es") not in PAIRS


_models: dict = {}


def tiny_model(name: str):
    if name not in _models:
        cfg = RunConfig()
        cfg.model.name = name
        _models[name] = get_model(cfg)
    return _models[name]


@pytest.mark.parametrize("model_name, task_name", PAIRS, ids=[f"{m}-{t}" for m, t in PAIRS])
def test_pair_trains_and_generates_on_fixture(model_name, task_name, tmp_path):
    tiny = f"{model_name}-tiny"
    task = get_task(task_name)
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = tiny, task_name
    files = fixture_files(task_name)
    cfg.data.train_file, cfg.data.validation_file = files["train"], files["validation"]
    cfg.data.max_source_length = 1024 if model_name == "ledo" else 256
    cfg.data.max_target_length = 64
    cfg.data.cache_dir = str(tmp_path)
    validate(cfg)
    model, tokenizer, spec = tiny_model(tiny)
    split = get_split(cfg, task, tokenizer, model, "train", 4, lambda message: None)
    assert len(split.tokenized) == 4
    collator = get_collator(cfg, spec, tokenizer, model)
    batch = collator([split.tokenized[i] for i in range(4)])
    if spec.family == "led":
        assert batch["global_attention_mask"][:, 0].tolist() == [1, 1, 1, 1]
    labels = batch.pop("labels")
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(**batch).logits
    loss = token_ce_sum(logits, labels) / (labels != -100).sum()
    assert math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens = 2, 5, 0
    generation_config = get_generation_config(cfg, spec, tokenizer)
    gen_inputs = {k: batch[k][:2] for k in ("input_ids", "attention_mask",
                                            "global_attention_mask") if k in batch}
    with torch.no_grad():
        out = model.generate(**gen_inputs, generation_config=generation_config)
    assert out.shape[0] == 2 and out.shape[1] >= 2
    assert out[0, 0].item() == generation_config.decoder_start_token_id
    texts = [clean_prediction(task, t) for t in tokenizer.batch_decode(out,
                                                                        skip_special_tokens=True)]
    assert all(isinstance(t, str) for t in texts)
