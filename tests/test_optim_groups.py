"""AdamW's weight decay: the paper's value by default, and never on biases, norms or T5's
relative position bias (transformers' Trainer leaves those out too)."""

from __future__ import annotations

import pytest

from seq2seq_es.config import compose
from seq2seq_es.engine.builders import get_model
from seq2seq_es.engine.optim import param_groups


@pytest.mark.parametrize("task, model", [("mlsum", "barto"), ("sqac", "t5s"),
                                         ("bisect", "beto2beto"), ("wmt13-es-en", "t5s")])
def test_paper_runs_have_no_weight_decay(task, model):
    # None of the paper's shell files passes --weight_decay: transformers' default, 0.
    assert compose(task=task, model=model).optim.weight_decay == 0.0


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny", "beto2beto-tiny"])
def test_biases_norms_and_position_bias_get_no_decay(name):
    cfg = compose(task="mlsum", model=name)
    model, _, _ = get_model(cfg)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert undecayed and decayed and not undecayed & decayed
    assert all(n.endswith(".bias") or "norm" in n.lower() or "bias" in n for n in undecayed), \
        sorted(undecayed)
    assert not any("bias" in n or "norm" in n.lower() for n in decayed), sorted(decayed)
    if name == "t5s-tiny":  # the 2-D relative position table, decayed before by the 1-D rule
        assert any("relative_attention_bias" in n for n in undecayed)
    # every trainable parameter is in exactly one group
    assert len(undecayed) + len(decayed) == sum(1 for p in model.parameters() if p.requires_grad)
