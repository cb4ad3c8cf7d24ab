"""Loading never leaves 16-bit weights (training and evaluation start from fp32), and a model
folder without its run's config decodes as its own generation_config.json says."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from seq2seq_es.config import RunConfig
from seq2seq_es.engine.builders import get_model
from seq2seq_es.engine.inference import inference_config, resolve_saved
from seq2seq_es.models import load_model_and_tokenizer, save_model


def _export(folder, dtype: str, generation: dict | None = None):
    cfg = RunConfig()
    cfg.model.name = "barto-tiny"
    model, tokenizer, _ = get_model(cfg)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()} \
        if dtype == "bf16" else None
    save_model(model, folder, state_dict=state, dtype=dtype)
    tokenizer.save_pretrained(folder)
    if generation is not None:
        GenerationConfig(**generation).save_pretrained(folder)
    return model


def test_a_bf16_export_loads_with_fp32_weights(tmp_path):
    original = _export(tmp_path, "bf16")
    model, _ = load_model_and_tokenizer("barto-tiny", str(tmp_path))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # the values are the export's bf16 ones, upcast exactly
    name, weight = next(iter(original.state_dict().items()))
    assert torch.equal(model.state_dict()[name], weight.to(torch.bfloat16).float())


def test_a_model_folder_without_run_config_decodes_with_its_own_generation_config(tmp_path):
    _export(tmp_path, "fp32", {"num_beams": 2, "max_new_tokens": 7, "min_new_tokens": 2,
                               "no_repeat_ngram_size": 0, "length_penalty": 1.5,
                               "early_stopping": False, "decoder_start_token_id": 2})
    saved = resolve_saved(tmp_path)
    cfg = inference_config(saved, model="barto-tiny", task="mlsum", allow_model=True)
    assert (cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens) == (2, 7, 2)
    assert (cfg.gen.no_repeat_ngram_size, cfg.gen.length_penalty, cfg.gen.early_stopping) == \
        (0, 1.5, False)
    # the command line still wins
    cfg = inference_config(saved, model="barto-tiny", task="mlsum", allow_model=True,
                           overrides={"gen.num_beams": "3"})
    assert (cfg.gen.num_beams, cfg.gen.max_new_tokens) == (3, 7)


def test_a_folder_without_a_minimum_decodes_with_none_and_reads_length_limits_like_transformers(
        tmp_path):
    # Our exports leave min_new_tokens out when it is 0; transformers then applies no minimum.
    # mlsum's registry minimum (8) must not creep back in. A folder written by another tool may
    # give max_length / min_length instead, which count the decoder start token.
    _export(tmp_path, "fp32", {"num_beams": 4, "max_new_tokens": 48, "decoder_start_token_id": 2})
    cfg = inference_config(resolve_saved(tmp_path), model="barto-tiny", task="mlsum",
                           allow_model=True)
    assert (cfg.gen.max_new_tokens, cfg.gen.min_new_tokens) == (48, 0)
    other = tmp_path / "other"
    _export(other, "fp32", {"num_beams": 4, "max_length": 31, "min_length": 6,
                            "decoder_start_token_id": 2})
    cfg = inference_config(resolve_saved(other), model="barto-tiny", task="mlsum",
                           allow_model=True)
    assert (cfg.gen.max_new_tokens, cfg.gen.min_new_tokens) == (30, 5)
