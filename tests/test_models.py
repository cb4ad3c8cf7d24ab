"""The model zoo on its tiny twins: registry, loading, special tokens, generation, tokenizers,
shared encoder-decoder pairs, BART->LED conversion, and the tiny-checkpoint cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import shutil
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from seq2seq_es.errors import ConfigError, UnknownNameError
from seq2seq_es.models import (MODELS, build_generation_config, convert_bart_to_led,
                               convert_led_main, count_parameters, get_model_spec,
                               load_model_and_tokenizer, save_model, shared_parameter_pairs)
from seq2seq_es.models.convert_led import BART_POSITION_OFFSET
from seq2seq_es.models.families import check_tokenizer, resolve_checkpoint

REAL = ["barto", "t5s", "ledo", "beto2beto", "betoshare", "roberta2roberta", "robertashare",
        "mbert2mbert", "mbertshare"]
TINY = [f"{name}-tiny" for name in REAL]
SPANISH = "¿Dónde está la canción?  Niño, ñandú, pingüino."

# Per family: the token each special id must be (strings, so the test does not restate ids).
EXPECTED_SPECIALS = {
    "bart": {"decoder_start": "</s>", "eos": "</s>", "pad": "<pad>", "bos": "<s>"},
    "led": {"decoder_start": "</s>", "eos": "</s>", "pad": "<pad>", "bos": "<s>"},
    "t5": {"decoder_start": "<pad>", "eos": "</s>", "pad": "<pad>", "bos": None},
    "bert": {"decoder_start": "[CLS]", "eos": "[SEP]", "pad": "[PAD]", "bos": "[CLS]"},
    "roberta": {"decoder_start": "<s>", "eos": "</s>", "pad": "<pad>", "bos": "<s>"},
}
# The real checkpoints' ids the tiny tokenizers mimic.
EXPECTED_IDS = {
    "barto-tiny": {"decoder_start": 2, "eos": 2, "pad": 1, "bos": 0},
    "t5s-tiny": {"decoder_start": 0, "eos": 1, "pad": 0, "bos": None},
    "beto2beto-tiny": {"pad": 1},
    "mbert2mbert-tiny": {"decoder_start": 101, "eos": 102, "pad": 0},
    "roberta2roberta-tiny": {"decoder_start": 0, "eos": 2, "pad": 1},
}
# EncoderDecoderModel warns on every loss computed from labels; the warning is about v4.12.
pytestmark = pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning")

MODEL_CLASS = {"bart": "BartForConditionalGeneration", "t5": "T5ForConditionalGeneration",
               "led": "LEDForConditionalGeneration", "bert2bert": "Bert2BertModel"}


@pytest.fixture(scope="module", autouse=True)
def fresh_tiny_cache(tmp_path_factory):
    """Every tiny twin is built from scratch in this module's own cache."""
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("seq2seq_es_cache")
    patch.setenv("SEQ2SEQ_ES_CACHE", str(cache))
    yield cache
    patch.undo()


def special_kind(name: str) -> str:
    spec = get_model_spec(name)
    if spec.family != "bert2bert":
        return spec.family
    return "roberta" if name.startswith("roberta") else "bert"


def batch_for(model, tokenizer, sources, targets):
    batch = tokenizer(sources, return_tensors="pt", padding=True, return_token_type_ids=False)
    labels = tokenizer(targets, return_tensors="pt", padding=True)["input_ids"]
    batch["labels"] = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
    if model.config.model_type == "led":
        global_mask = torch.zeros_like(batch["input_ids"])
        global_mask[:, 0] = 1
        batch["global_attention_mask"] = global_mask
    return dict(batch)


def state_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_has_nine_models_and_their_tiny_twins():
    assert sorted(MODELS) == sorted(REAL + TINY)
    for name in REAL:
        real, tiny = get_model_spec(name), get_model_spec(name + "-tiny")
        assert not real.tiny and tiny.tiny
        assert (tiny.family, tiny.shared, tiny.hub_id) == (real.family, real.shared, real.hub_id)
        assert tiny.base_name == name
    assert get_model_spec("barto").hub_id == "vgaraujov/bart-base-spanish"
    assert get_model_spec("t5s").hub_id == "vgaraujov/t5-base-spanish"
    assert get_model_spec("ledo").hub_id == "vgaraujov/led-base-16384-spanish"
    assert get_model_spec("betoshare").hub_id == "dccuchile/bert-base-spanish-wwm-cased"
    assert get_model_spec("robertashare").hub_id == "PlanTL-GOB-ES/roberta-base-bne"
    assert get_model_spec("mbertshare").hub_id == "bert-base-multilingual-cased"
    assert [n for n in REAL if get_model_spec(n).shared] == ["betoshare", "robertashare",
                                                             "mbertshare"]
    assert (get_model_spec("ledo").max_source_positions,
            get_model_spec("ledo").max_target_positions) == (16384, 1024)
    assert get_model_spec("barto").max_source_positions == 1024
    assert get_model_spec("roberta2roberta").max_source_positions == 512
    assert get_model_spec("beto2beto").defaults["data.max_source_length"] == 512
    with pytest.raises(TypeError):
        get_model_spec("beto2beto").defaults["data.max_source_length"] = 1024


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as err:
        get_model_spec("bart0")
    assert "bart0" in str(err.value) and "barto-tiny" in str(err.value)
    with pytest.raises(UnknownNameError):
        load_model_and_tokenizer("t5-base")


# ---------------------------------------------------------------------------------------------
# Loading, special tokens, forward, generation


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_trains_and_generates_with_its_family_tokens(name):
    spec = get_model_spec(name)
    model, tokenizer = load_model_and_tokenizer(name)
    assert type(model).__name__ == MODEL_CLASS[spec.family]

    expected = EXPECTED_SPECIALS[special_kind(name)]
    wired = {"decoder_start": model.config.decoder_start_token_id,
             "eos": model.config.eos_token_id, "pad": model.config.pad_token_id,
             "bos": model.config.bos_token_id}
    for role, token in expected.items():
        assert wired[role] == (None if token is None else tokenizer.convert_tokens_to_ids(token))
        assert getattr(model.generation_config, f"{role}_token_id") == wired[role]
    for role, token_id in EXPECTED_IDS.get(name, {}).items():
        assert wired[role] == token_id

    model.train()
    batch = batch_for(model, tokenizer, ["¿Quién escribió Cien años de soledad?", SPANISH],
                      ["Gabriel García Márquez.", "Una frase con eñe."])
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    generation = build_generation_config(name, tokenizer, num_beams=2, max_new_tokens=6,
                                         min_new_tokens=2)
    extra = {"global_attention_mask": batch["global_attention_mask"]} \
        if "global_attention_mask" in batch else {}
    with torch.no_grad():
        output = model.generate(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"],
                                generation_config=generation, **extra)
    assert output.shape[0] == 2 and 3 <= output.shape[1] <= 7
    assert output[:, 0].tolist() == [wired["decoder_start"]] * 2


def test_generation_config_is_explicit_and_model_config_holds_no_decoding_settings():
    model, tokenizer = load_model_and_tokenizer("barto-tiny")
    config = build_generation_config("barto-tiny", tokenizer, num_beams=4, max_new_tokens=48,
                                     min_new_tokens=16, length_penalty=2.0,
                                     no_repeat_ngram_size=3, early_stopping=True)
    assert (config.num_beams, config.max_new_tokens, config.min_new_tokens) == (4, 48, 16)
    assert (config.length_penalty, config.no_repeat_ngram_size, config.early_stopping) == \
        (2.0, 3, True)
    assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id) == (2, 2, 1)
    # The model's own defaults carry special tokens only; nothing sits on model.config.
    assert model.generation_config.num_beams is None
    assert model.generation_config.no_repeat_ngram_size is None
    assert model.config._get_generation_parameters() == {}
    t5_config = build_generation_config("t5s", load_model_and_tokenizer("t5s-tiny")[1],
                                        num_beams=1, max_new_tokens=8)
    assert (t5_config.decoder_start_token_id, t5_config.eos_token_id) == (0, 1)


@pytest.mark.parametrize("kwargs, key", [
    ({"num_beams": 0, "max_new_tokens": 8}, "gen.num_beams"),
    ({"num_beams": 1, "max_new_tokens": 0}, "gen.max_new_tokens"),
    ({"num_beams": 1, "max_new_tokens": 8, "min_new_tokens": 9}, "gen.min_new_tokens"),
    ({"num_beams": 1, "max_new_tokens": 8, "no_repeat_ngram_size": -1},
     "gen.no_repeat_ngram_size"),
])
def test_bad_generation_settings_name_their_key(kwargs, key):
    _, tokenizer = load_model_and_tokenizer("barto-tiny")
    with pytest.raises(ConfigError) as err:
        build_generation_config("barto-tiny", tokenizer, **kwargs)
    assert err.value.key == key


def test_missing_local_path_is_one_config_error(tmp_path):
    for missing in (str(tmp_path / "no_such_checkpoint"), "./runs/missing", "runs/a/best"):
        with pytest.raises(ConfigError) as err:
            load_model_and_tokenizer("barto-tiny", path=missing)
        assert err.value.key == "model.path" and missing in str(err.value)
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    with pytest.raises(ConfigError, match="is a file"):
        load_model_and_tokenizer("barto-tiny", path=str(a_file))
    # A hub id is not a local path: it is passed on to the hub, not refused here.
    assert resolve_checkpoint("vgaraujov/bart-base-spanish", "model.path") == \
        "vgaraujov/bart-base-spanish"


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
    model, tokenizer = load_model_and_tokenizer("t5s-tiny")
    save_model(model, tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    with pytest.raises(ConfigError, match="holds a t5 model") as err:
        load_model_and_tokenizer("barto-tiny", path=str(tmp_path / "t5"))
    assert err.value.key == "model.path"


def test_sharded_weights_are_as_readable_as_the_config(tmp_path):
    # A model saved in shards (model-00001-of-00002.safetensors and its index), as a base-size
    # model over max_shard_size is: every piece takes config.json's mode, not only one file.
    from seq2seq_es.models.file_modes import readable_as_config

    (tmp_path / "config.json").write_text("{}")
    os.chmod(tmp_path / "config.json", 0o644)
    pieces = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
              "model.safetensors.index.json"]
    for name in pieces:
        (tmp_path / name).write_bytes(b"")
        os.chmod(tmp_path / name, 0o600)
    readable_as_config(tmp_path)
    assert {name: oct((tmp_path / name).stat().st_mode & 0o777) for name in pieces} == \
        dict.fromkeys(pieces, "0o644")


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny", "ledo-tiny", "beto2beto-tiny",
                                  "roberta2roberta-tiny", "mbert2mbert-tiny"])
def test_saved_tiny_model_loads_back_through_the_loader(name, tmp_path):
    model, tokenizer = load_model_and_tokenizer(name)
    with torch.no_grad():
        for param in model.parameters():      # a "fine-tuned" model differs from the built one
            param.add_(0.01)
    umask = os.umask(0o022)
    try:
        save_model(model, tmp_path / "ckpt")
    finally:
        os.umask(umask)
    # readable by others as every other file of the folder (transformers wrote it 0600)
    assert {oct(path.stat().st_mode & 0o777) for path in (tmp_path / "ckpt").iterdir()} == {"0o644"}
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded, loaded_tokenizer = load_model_and_tokenizer(name, path=str(tmp_path / "ckpt"))
    assert type(loaded) is type(model)
    assert state_digest(loaded) == state_digest(model)
    assert loaded_tokenizer(SPANISH)["input_ids"] == tokenizer(SPANISH)["input_ids"]
    assert loaded.config.decoder_start_token_id == model.config.decoder_start_token_id
    # transformers 5.25 would kernelize it with Hub code by default (family.NO_HUB_KERNELS)
    assert not any(getattr(m, "use_kernels", False) for m in loaded.modules())


def test_led_tiny_reads_4096_token_sources():
    model, tokenizer = load_model_and_tokenizer("ledo-tiny")
    assert model.config.max_encoder_position_embeddings >= 4096
    assert all(2 <= w <= 32 for w in model.config.attention_window)
    input_ids = torch.randint(5, len(tokenizer) - 1, (1, 4096))
    global_mask = torch.zeros_like(input_ids)
    global_mask[:, 0] = 1
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    global_attention_mask=global_mask, labels=input_ids[:, :8])
    assert torch.isfinite(out.loss)


# ---------------------------------------------------------------------------------------------
# Tokenizers


@pytest.mark.parametrize("name", TINY)
def test_tiny_tokenizer_round_trips_spanish_without_unknowns(name):
    _, tokenizer = load_model_and_tokenizer(name)
    ids = tokenizer(SPANISH)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert len(ids) > 10                        # not an empty vocabulary spelling bytes
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    kind = special_kind(name)
    if kind in ("bart", "led", "roberta"):        # byte-level BPE: exact
        assert decoded == SPANISH
    elif kind == "t5":                            # sentencepiece collapses whitespace runs
        assert decoded == " ".join(SPANISH.split())
    else:                                         # WordPiece puts spaces around punctuation
        assert decoded.split() != SPANISH.split()
        assert "".join(decoded.split()) == "".join(SPANISH.split())
    portuguese = "A canção não é ruim; ação, coração e pão."
    assert tokenizer.unk_token_id not in tokenizer(portuguese)["input_ids"]


def test_empty_tokenizers_are_refused(tmp_path):
    # transformers 5 builds these without complaint: a tokenizer class constructed without a
    # vocabulary, and AutoTokenizer on a folder that holds no tokenizer files.
    from transformers import T5Tokenizer
    with pytest.raises(ConfigError, match="empty or not for Spanish"):
        check_tokenizer(T5Tokenizer(), "T5Tokenizer()")
    model, _ = load_model_and_tokenizer("barto-tiny")
    save_model(model, tmp_path / "weights_only")
    with pytest.raises(ConfigError, match="empty") as err:
        load_model_and_tokenizer("barto-tiny", path=str(tmp_path / "weights_only"))
    assert err.value.key == "model.path"


def test_t5_tokenizer_has_the_hundred_sentinels_last():
    _, tokenizer = load_model_and_tokenizer("t5s-tiny")
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    assert tokenizer.convert_tokens_to_ids("<extra_id_99>") == len(tokenizer) - 100


# ---------------------------------------------------------------------------------------------
# Shared encoder-decoder pairs


@pytest.mark.parametrize("name", ["betoshare-tiny", "robertashare-tiny", "mbertshare-tiny"])
def test_share_ties_every_encoder_weight_to_the_decoder(name):
    model, _ = load_model_and_tokenizer(name)
    mapping = model.encoder_to_decoder_names()
    encoder_params = dict(model.encoder.named_parameters(remove_duplicate=False))
    assert len(mapping) == len(encoder_params) > 20
    params = dict(model.named_parameters(remove_duplicate=False))
    for enc, dec in mapping.items():
        assert params[enc] is params[dec]
    assert len(shared_parameter_pairs(model)) == len(mapping)
    # Cross-attention and the LM head's own layers belong to the decoder alone.
    encoder_ids = {id(p) for p in encoder_params.values()}
    own = [n for n in params if ".crossattention." in n or ".lm_head." in n or ".cls." in n]
    own = [n for n in own if not n.endswith("decoder.weight")]   # the head's tie to embeddings
    assert own and not any(id(params[n]) in encoder_ids for n in own)


def test_share_has_one_gradient_and_counts_each_weight_once():
    shared, tokenizer = load_model_and_tokenizer("betoshare-tiny")
    untied, _ = load_model_and_tokenizer("beto2beto-tiny")
    assert state_digest(shared) == state_digest(untied)   # same numbers, different wiring
    batch = batch_for(shared, tokenizer, ["El tren une Madrid y Barcelona.", SPANISH],
                      ["Un tren.", "Aves."])
    for model in (shared, untied):
        model.eval()
        model(**batch).loss.backward()
    untied_params = dict(untied.named_parameters(remove_duplicate=False))
    shared_params = dict(shared.named_parameters(remove_duplicate=False))
    for enc, dec in shared.encoder_to_decoder_names().items():
        both_uses = untied_params[enc].grad + untied_params[dec].grad
        torch.testing.assert_close(shared_params[dec].grad, both_uses, rtol=1e-5, atol=1e-7)

    encoder_size = sum(p.numel() for p in untied.encoder.parameters())
    decoder_size = count_parameters(untied.decoder)
    assert count_parameters(untied) == encoder_size + decoder_size
    assert count_parameters(shared) == decoder_size
    assert count_parameters(untied) - count_parameters(shared) == encoder_size
    assert sum(p.numel() for p in shared.parameters()) == count_parameters(shared)


def test_share_survives_save_and_load(tmp_path):
    model, tokenizer = load_model_and_tokenizer("robertashare-tiny")
    with torch.no_grad():
        model.decoder.roberta.embeddings.word_embeddings.weight.mul_(1.5)
    save_model(model, tmp_path / "shared")
    tokenizer.save_pretrained(tmp_path / "shared")
    with safe_open(str(tmp_path / "shared" / "model.safetensors"), "pt") as weights:
        # Both copies stored, equal, so that plain transformers loads the encoder too
        # (tests/test_shared_export.py); our loader ties them back below.
        for enc, dec in model.encoder_to_decoder_names().items():
            assert torch.equal(weights.get_tensor(enc), weights.get_tensor(dec))
    assert json.loads((tmp_path / "shared" / "config.json").read_text())[
        "share_encoder_decoder"] is True

    loaded, _ = load_model_and_tokenizer("robertashare-tiny", path=str(tmp_path / "shared"))
    assert len(shared_parameter_pairs(loaded)) == len(loaded.encoder_to_decoder_names())
    assert count_parameters(loaded) == count_parameters(model)
    assert state_digest(loaded) == state_digest(model)
    with pytest.raises(ConfigError, match="shared encoder-decoder"):
        load_model_and_tokenizer("roberta2roberta-tiny", path=str(tmp_path / "shared"))


# ---------------------------------------------------------------------------------------------
# BART -> LED


def test_converted_led_computes_what_the_bart_did(tmp_path):
    bart, tokenizer = load_model_and_tokenizer("barto-tiny")
    save_model(bart, tmp_path / "bart")
    tokenizer.save_pretrained(tmp_path / "bart")
    assert convert_led_main([str(tmp_path / "bart"), str(tmp_path / "led"),
                             "--max-positions", "2496", "--attention-window", "32"]) == 0
    led, led_tokenizer = load_model_and_tokenizer("ledo-tiny", path=str(tmp_path / "led"))
    assert led.config.max_encoder_position_embeddings == 2496
    assert led.config.max_decoder_position_embeddings == 1024
    assert led_tokenizer.model_max_length == 2496

    bart_rows = bart.model.encoder.embed_positions.weight[BART_POSITION_OFFSET:]
    led_rows = led.led.encoder.embed_positions.weight
    assert torch.equal(led_rows[:1024], bart_rows) and torch.equal(led_rows[1024:2048], bart_rows)
    assert torch.equal(led_rows[2048:], bart_rows[:2496 - 2048])
    assert torch.equal(led.led.decoder.embed_positions.weight,
                       bart.model.decoder.embed_positions.weight[BART_POSITION_OFFSET:])
    layer = led.led.encoder.layers[1].self_attn.longformer_self_attn
    assert torch.equal(layer.key_global.weight,
                       bart.model.encoder.layers[1].self_attn.k_proj.weight)

    # At most 17 tokens: a one-sided window of 16 lets every token see every other one.
    batch = batch_for(bart, tokenizer, ["¿Dónde está la canción?", "Niño, ñandú y pingüino."],
                      ["Aquí.", "Tres aves."])
    assert batch["input_ids"].shape[1] <= 17
    bart.eval()
    led.eval()
    with torch.no_grad():
        expected = bart(**batch).logits
        local_only = led(**batch).logits
        with_global = led(**batch, global_attention_mask=torch.nn.functional.one_hot(
            torch.zeros(2, dtype=torch.long), batch["input_ids"].shape[1])).logits
    torch.testing.assert_close(local_only, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(with_global, expected, rtol=1e-4, atol=1e-5)
    # BART's decoding defaults came along: plain `generate` on the LED forced no </s> at the
    # end where the BART did (its generation_config.json held the special ids only)
    bart.generation_config.forced_eos_token_id = tokenizer.eos_token_id
    bart.generation_config.num_beams = 3
    save_model(bart, tmp_path / "bart2")
    tokenizer.save_pretrained(tmp_path / "bart2")
    convert_bart_to_led(str(tmp_path / "bart2"), str(tmp_path / "led2"), max_positions=2496,
                        attention_window=32)
    saved = json.loads((tmp_path / "led2" / "generation_config.json").read_text())
    assert saved["forced_eos_token_id"] == tokenizer.eos_token_id and saved["num_beams"] == 3


def test_convert_led_refuses_what_it_cannot_convert(tmp_path, capsys):
    t5, tokenizer = load_model_and_tokenizer("t5s-tiny")
    save_model(t5, tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    with pytest.raises(ConfigError, match="needs a BART checkpoint"):
        convert_bart_to_led(str(tmp_path / "t5"), str(tmp_path / "led"))
    with pytest.raises(ConfigError, match="even"):
        convert_bart_to_led(str(tmp_path / "t5"), str(tmp_path / "led"), attention_window=15)
    # Inputs are padded to a multiple of the window: positions that are not one fail at run time
    # (an input of 103 tokens padded to 1024 over 512 positions: "index out of range").
    with pytest.raises(ConfigError, match=r"argument --max-positions: 512 is not a multiple of "
                                          r"--attention-window 1024"):
        convert_bart_to_led(str(tmp_path / "t5"), str(tmp_path / "led"), max_positions=512)
    # A run folder stands for its exported model, as for evaluate and predict.
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "t5", run / "final")
    (run / "config.yaml").write_text("model:\n  name: t5s-tiny\n")
    with pytest.raises(ConfigError, match=f"argument SRC: {run / 'final'} holds a t5 model"):
        convert_bart_to_led(str(run), str(tmp_path / "led"))
    assert convert_led_main([str(tmp_path / "missing_bart"), str(tmp_path / "led")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        convert_bart_to_led(str(tmp_path / "t5"), str(tmp_path / "busy"))
    # an OUT under a file, and a SRC without weights: one line each, not a traceback after
    # loading (the first) or from transformers (the second)
    with pytest.raises(ConfigError, match=r"argument OUT: .*x is a file"):
        convert_bart_to_led(str(tmp_path / "t5"), str(tmp_path / "busy" / "x" / "led"))
    bart, bart_tokenizer = load_model_and_tokenizer("barto-tiny")
    bart.config.save_pretrained(tmp_path / "no_weights")
    bart_tokenizer.save_pretrained(tmp_path / "no_weights")
    with pytest.raises(ConfigError, match="argument SRC: no BART weights could be loaded from"):
        convert_bart_to_led(str(tmp_path / "no_weights"), str(tmp_path / "led"))


# ---------------------------------------------------------------------------------------------
# The tiny cache: concurrent builds, identical weights everywhere

_BUILD_AND_DIGEST = textwrap.dedent("""
    import hashlib, json, sys
    from seq2seq_es.models import load_model_and_tokenizer
    out = {}
    for name in sys.argv[1:]:
        model, tokenizer = load_model_and_tokenizer(name)
        digest = hashlib.sha256()
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        out[name] = [digest.hexdigest(), sorted(tokenizer.get_vocab().items())]
    print(json.dumps(out))
""")


@pytest.mark.slow  # two processes each building two tiny models: about 20 s
def test_two_processes_building_at_once_get_the_same_models_as_this_one(tmp_path):
    names = ["ledo-tiny", "betoshare-tiny"]
    env = dict(os.environ, SEQ2SEQ_ES_CACHE=str(tmp_path / "shared_cache"))
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_AND_DIGEST, *names], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    # This process built its own copies in another cache folder.
    here = {}
    for name in names:
        model, tokenizer = load_model_and_tokenizer(name)
        vocab = [list(item) for item in sorted(tokenizer.get_vocab().items())]
        here[name] = [state_digest(model), vocab]
    assert results[0] == results[1] == here
    tiny_root = tmp_path / "shared_cache" / "tiny"
    leftovers = [p.name for p in tiny_root.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert sorted(p.name.rsplit("-", 1)[0] for p in tiny_root.iterdir()) == \
        ["barto", "beto", "ledo"]


def test_a_hub_model_out_of_reach_says_how_to_get_it_onto_the_cluster():
    # HF_HUB_OFFLINE (conftest) stands for a compute node without network: the error says
    # where the weights can come from instead (a download elsewhere, or a local copy).
    from seq2seq_es.models.sources import load_tokenizer

    with pytest.raises(ConfigError) as refused:  # an id no cache holds
        load_tokenizer("seq2seq-es-tests/no-such-model", key="model.name")
    message = str(refused.value)
    assert message.startswith("config key 'model.name': 'seq2seq-es-tests/no-such-model' is not a "
                              "local folder and could not be loaded from the Hugging Face hub ")
    assert message.endswith("`hf download seq2seq-es-tests/no-such-model` where there is network, "
                            "into the HF_HOME the jobs read, or a local copy with --model.path "
                            "DIR"), message
