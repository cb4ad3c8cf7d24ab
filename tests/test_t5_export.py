"""A T5S export says tie_word_embeddings false (T5 v1.1's untied, unscaled LM head), so that
transformers 4 reads it as transformers 5 does; it still loads in transformers 5 as the model
that was saved."""

from __future__ import annotations

import json

import torch

from seq2seq_es.config import RunConfig
from seq2seq_es.engine.builders import get_model
from seq2seq_es.models import save_model


def test_t5_export_keeps_its_untied_head_for_every_transformers_version(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    cfg = RunConfig()
    cfg.model.name = "t5s-tiny"
    model, _, _ = get_model(cfg)
    model.eval()
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    save_model(model, tmp_path, dtype="fp32")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["scale_decoder_outputs"] is False
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight.data_ptr() != loaded.shared.weight.data_ptr()
    assert not loaded.config.scale_decoder_outputs
    ids = torch.tensor([[5, 6, 7, 8, 1]])
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
        got = loaded(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
    assert torch.equal(got, expected)


def test_bart_export_keeps_its_tied_head(tmp_path):
    cfg = RunConfig()
    cfg.model.name = "barto-tiny"
    model, _, _ = get_model(cfg)
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] is True       # BART's head is its embedding matrix
