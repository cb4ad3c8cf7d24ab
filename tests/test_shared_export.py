"""Shared BERT2BERT exports (BETOShare, RoBERTaShare, mBERTShare) are complete EncoderDecoderModel
checkpoints: plain `transformers.EncoderDecoderModel.from_pretrained` loads every trained weight,
and our loader ties the two copies of each encoder weight back into the decoder's Parameter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from seq2seq_es.errors import ConfigError
from seq2seq_es.models import (count_parameters, load_model_and_tokenizer, save_model,
                               shared_parameter_pairs)

SHARED = ["betoshare-tiny", "robertashare-tiny", "mbertshare-tiny"]
# What plain EncoderDecoderModel builds and our pairs do not (BertModel/RobertaModel make a pooler
# unless told add_pooling_layer=False, which no config key can say). EncoderDecoderModel reads
# only the encoder's last hidden states, so these never reach a loss or a generated token
# (`assert_same_outputs` shows it).
UNUSED_POOLER = {"encoder.pooler.dense.weight", "encoder.pooler.dense.bias"}
SOURCES = ["El tren une Madrid y Barcelona en dos horas y media.", "¿Dónde está la canción?"]
TARGETS = ["Un tren rápido.", "Aves."]

pytestmark = [pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning"),
              pytest.mark.usefixtures("own_tiny_cache")]


def trained_like(name: str):
    """The tiny pair with every distinct weight moved off its initial value (as training would)."""
    model, tokenizer = load_model_and_tokenizer(name)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():      # each shared Parameter once
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    return model, tokenizer


def export(model, tokenizer, folder: Path, state_dict: dict | None = None) -> Path:
    save_model(model, folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    return folder


def file_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_plain_load_matches(folder: Path, model) -> None:
    """Plain EncoderDecoderModel loads `folder` with every tensor of `model` (which is tied,
    trained, and has no pooler) equal, and reports only the unused pooler as new."""
    from transformers import EncoderDecoderModel

    plain, info = EncoderDecoderModel.from_pretrained(str(folder), output_loading_info=True)
    assert type(plain) is EncoderDecoderModel
    assert set(info["missing_keys"]) == UNUSED_POOLER, info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    ours, theirs = model.state_dict(), plain.state_dict()
    assert set(theirs) - set(ours) == UNUSED_POOLER
    assert set(ours) <= set(theirs)
    differ = [key for key, value in ours.items() if not torch.equal(value, theirs[key])]
    assert not differ, f"plain transformers loads other values for {differ}"
    # Plain transformers keeps the two copies apart: the encoder is its own, equal, weights.
    plain_params = dict(plain.named_parameters(remove_duplicate=False))
    for enc, dec in model.encoder_to_decoder_names().items():
        assert plain_params[enc] is not plain_params[dec]
    assert_same_outputs(plain, model, model_tokenizer(folder))


def model_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def assert_same_outputs(plain, model, tokenizer) -> None:
    """Same loss, logits and greedy generation on a padded batch (RoBERTa's position ids start
    after the padding index: padding exercises that offset)."""
    from transformers import GenerationConfig

    batch = tokenizer(SOURCES, return_tensors="pt", padding=True, return_token_type_ids=False)
    assert (batch["attention_mask"] == 0).any()           # one source is padded
    labels = tokenizer(TARGETS, return_tensors="pt", padding=True)["input_ids"]
    labels = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
    plain.eval(), model.eval()
    with torch.no_grad():
        mine, theirs = model(**batch, labels=labels), plain(**batch, labels=labels)
        torch.testing.assert_close(theirs.logits, mine.logits, rtol=0, atol=0)
        torch.testing.assert_close(theirs.loss, mine.loss, rtol=0, atol=0)
        # The same decoding settings for both: a run's final/ also holds the task's own
        # (generation_config.json, e.g. no_repeat_ngram_size), which plain from_pretrained
        # picks up as defaults that generate() fills into unset fields; ours are clean.
        plain.generation_config = GenerationConfig(**model.generation_config.to_diff_dict())
        greedy = GenerationConfig(
            max_new_tokens=6, num_beams=1, do_sample=False,
            decoder_start_token_id=model.config.decoder_start_token_id,
            eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
        assert torch.equal(plain.generate(**batch, generation_config=greedy),
                           model.generate(**batch, generation_config=greedy))


@pytest.mark.parametrize("name", SHARED)
def test_plain_transformers_loads_every_trained_weight_of_a_shared_export(name, tmp_path):
    model, tokenizer = trained_like(name)
    folder = export(model, tokenizer, tmp_path / "final")
    stored = file_tensors(folder)
    for enc, dec in model.encoder_to_decoder_names().items():
        assert enc in stored and dec in stored, enc
        assert torch.equal(stored[enc], stored[dec])
    assert_plain_load_matches(folder, model)


def test_an_unshared_pair_loads_in_plain_transformers_the_same_way(tmp_path):
    """BETO2BETO has no tie to write out; its export differs from plain transformers' model by
    the same unused pooler only."""
    model, tokenizer = trained_like("beto2beto-tiny")
    assert not shared_parameter_pairs(model)
    assert_plain_load_matches(export(model, tokenizer, tmp_path / "final"), model)


@pytest.mark.parametrize("name", ["betoshare-tiny", "robertashare-tiny"])
def test_our_loader_ties_the_two_equal_copies_back_into_one_parameter(name, tmp_path):
    model, tokenizer = trained_like(name)
    folder = export(model, tokenizer, tmp_path / "final")
    loaded, _ = load_model_and_tokenizer(name, path=str(folder))
    assert len(shared_parameter_pairs(loaded)) == len(loaded.encoder_to_decoder_names())
    assert count_parameters(loaded) == count_parameters(model)
    saved = model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in loaded.state_dict().items())
    # The kept Parameter is the decoder's module's own: the encoder's modules point at it.
    decoder_word = loaded.decoder.get_input_embeddings().weight
    assert loaded.encoder.get_input_embeddings().weight is decoder_word
    # ... and a save of the reloaded model writes the same file again.
    again = export(loaded, tokenizer, tmp_path / "again")
    first, second = file_tensors(folder), file_tensors(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_an_export_whose_two_copies_differ_is_refused_not_silently_untied(tmp_path):
    model, tokenizer = trained_like("betoshare-tiny")
    folder = export(model, tokenizer, tmp_path / "final")
    tensors = file_tensors(folder)
    key = "encoder.encoder.layer.0.output.dense.weight"
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="could not be tied"):
        load_model_and_tokenizer("betoshare-tiny", path=str(folder))


def test_an_export_with_the_decoder_copy_only_still_loads_tied(tmp_path):
    """The files written before the encoder copies were added (transformers' alias removal)."""
    from transformers import EncoderDecoderModel

    model, tokenizer = trained_like("robertashare-tiny")
    folder = tmp_path / "old"
    EncoderDecoderModel.save_pretrained(model, str(folder))   # bypasses Bert2BertModel's
    tokenizer.save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert not any(key.startswith("encoder.") for key in weights.keys())
    loaded, _ = load_model_and_tokenizer("robertashare-tiny", path=str(folder))
    assert len(shared_parameter_pairs(loaded)) == len(loaded.encoder_to_decoder_names())
    saved = model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in loaded.state_dict().items())


def test_a_consolidated_state_dict_with_one_tensor_per_tie_exports_complete(tmp_path):
    """ZeRO-3's consolidated state dict holds a tied weight once, under both names (one tensor
    object), in whatever dtype training used; the export clones it for the encoder."""
    model, tokenizer = trained_like("betoshare-tiny")
    consolidated = {key: value.detach().clone() for key, value in model.state_dict().items()}
    for enc, dec in model.encoder_to_decoder_names().items():
        consolidated[enc] = consolidated[dec]
    folder = export(model, tokenizer, tmp_path / "final", state_dict=consolidated)
    assert_plain_load_matches(folder, model)
    # A state dict missing both names of a tied weight is an error, not a silent gap.
    dec = next(iter(model.encoder_to_decoder_names().values()))
    enc = next(iter(model.encoder_to_decoder_names()))
    del consolidated[dec], consolidated[enc]
    with pytest.raises(ValueError, match="neither"):
        save_model(model, tmp_path / "broken", state_dict=consolidated)


@pytest.mark.slow
def test_zero3_export_of_a_shared_pair_is_complete(tmp_path):
    """The export path of a ZeRO-3 run (engine._zero3_consolidated_16bit_state_dict handed to
    save_model), on one process: the partitioned model's file loads in plain transformers."""
    import subprocess
    import sys

    script = tmp_path / "zero3_export.py"
    script.write_text(_ZERO3_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "final")],
                          capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    model, _ = load_model_and_tokenizer("betoshare-tiny", path=str(tmp_path / "final"))
    assert len(shared_parameter_pairs(model)) == len(model.encoder_to_decoder_names())
    initial, _ = load_model_and_tokenizer("betoshare-tiny")
    trained = [k for k, v in model.state_dict().items()
               if not torch.equal(v, initial.state_dict()[k])]
    assert any(k.startswith("encoder.") for k in trained)    # the step moved shared weights
    assert_plain_load_matches(tmp_path / "final", model)


_ZERO3_SCRIPT = r'''
import os, sys
os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"})
from seq2seq_es.engine.rendezvous import any_free_port
os.environ["MASTER_PORT"] = str(any_free_port())
from pathlib import Path
import torch
torch.set_num_threads(1)
from seq2seq_es.config import RunConfig
from seq2seq_es.engine import distributed as D
from seq2seq_es.engine.builders import get_engine, get_model
from seq2seq_es.engine.export import export_hf
from seq2seq_es.models import build_generation_config

env = D.read_env()
D.init(env, "gloo")
cfg = RunConfig()
cfg.model.name, cfg.data.task = "betoshare-tiny", "mlsum"
cfg.dist.zero_stage, cfg.train.precision, cfg.optim.lr = 3, "fp32", 1e-2
model, tokenizer, spec = get_model(cfg)
engine, *_ = get_engine(model, cfg, env, total_steps=2)
batch = tokenizer(["El tren une Madrid y Barcelona.", "Aves del sur."], return_tensors="pt",
                  padding=True, return_token_type_ids=False)
labels = tokenizer(["Un tren.", "Aves."], return_tensors="pt", padding=True)["input_ids"]
batch["labels"] = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
loss = engine(**batch).loss
engine.backward(loss)
engine.step()
generation = build_generation_config(spec, tokenizer, num_beams=1, max_new_tokens=4)
export_hf(engine, tokenizer, generation, Path(sys.argv[1]), 3, env)
D.close()
'''
