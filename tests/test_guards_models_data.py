"""Guards found by a mutation audit of models/family.py, families.py, sharing.py, convert_led.py,
data/collator.py, engine/export.py, engine/inference.py and tasks/formatting.py: each test fails
on a plausible slip in one of them (a flipped condition, a dropped refusal, an off-by-one) that
the rest of the fast tier let through. Fast: tiny checkpoints or plain objects, no hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from seq2seq_es.errors import ConfigError, Seq2SeqEsError
from seq2seq_es.models.family import get_family


pytestmark = pytest.mark.usefixtures("own_tiny_cache")


# ---------------------------------------------------------------------------------------------
# models/family.py


def test_t5_export_config_unties_only_a_v11_head():
    t5 = get_family("t5")
    v11 = {"scale_decoder_outputs": False, "tie_word_embeddings": True}
    assert t5.export_config(v11) is True and v11["tie_word_embeddings"] is False
    # Original T5 (tied and scaled), and a config that does not say (transformers 4's): as is.
    for config in ({"scale_decoder_outputs": True, "tie_word_embeddings": True},
                   {"tie_word_embeddings": True}):
        before = dict(config)
        assert t5.export_config(config) is False and config == before


def test_t5_lm_head_scale_follows_scale_decoder_outputs_else_the_tie():
    t5 = get_family("t5")

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(d_model=16, **config),
                               lm_head=SimpleNamespace(weight="W"))

    assert t5.lm_head(model(scale_decoder_outputs=True, tie_word_embeddings=False)) == \
        ("W", None, 0.25)
    assert t5.lm_head(model(scale_decoder_outputs=False, tie_word_embeddings=True)) == \
        ("W", None, 1.0)
    assert t5.lm_head(model(tie_word_embeddings=True)) == ("W", None, 0.25)
    assert t5.lm_head(model(tie_word_embeddings=False)) == ("W", None, 1.0)


# ---------------------------------------------------------------------------------------------
# models/families.py


def test_an_unloadable_model_names_the_local_folder_or_the_hub(tmp_path):
    from seq2seq_es.models.families import _load_model

    def broken(*args):
        raise OSError("no weights here")

    spec = SimpleNamespace(adapter=SimpleNamespace(load_model=broken))
    with pytest.raises(ConfigError, match="cannot load the model in") as err:
        _load_model(spec, str(tmp_path), None, "model.path", None)
    assert err.value.key == "model.path"
    with pytest.raises(ConfigError, match="not a local folder and could not be loaded from the "
                                          "Hugging Face hub") as err:
        _load_model(spec, "someone/missing-model", None, "model.name", None)
    assert err.value.key == "model.name"


BART_IDS = SimpleNamespace(bos_token_id=0, pad_token_id=1, eos_token_id=2)


def test_generation_config_refuses_impossible_lengths_and_beams():
    from seq2seq_es.models.families import build_generation_config

    def build(**kwargs):
        return build_generation_config("barto", BART_IDS, **{"num_beams": 1,
                                                             "max_new_tokens": 8, **kwargs})

    for kwargs, key in (({"num_beams": 0}, "gen.num_beams"),
                        ({"max_new_tokens": 0}, "gen.max_new_tokens"),
                        ({"min_new_tokens": 9}, "gen.min_new_tokens"),
                        ({"min_new_tokens": -1}, "gen.min_new_tokens"),
                        ({"no_repeat_ngram_size": -1}, "gen.no_repeat_ngram_size")):
        with pytest.raises(ConfigError) as err:
            build(**kwargs)
        assert err.value.key == key, kwargs
    # The edges are allowed: one beam, one token, a minimum equal to the maximum.
    edge = build(max_new_tokens=1, min_new_tokens=1)
    assert (edge.num_beams, edge.max_new_tokens, edge.min_new_tokens) == (1, 1, 1)


def test_generation_config_writes_only_the_settings_its_decoding_reads():
    from transformers import GenerationConfig

    from seq2seq_es.models.families import build_generation_config

    default = GenerationConfig()
    greedy = build_generation_config("barto", BART_IDS, num_beams=1, max_new_tokens=8,
                                     length_penalty=2.0, early_stopping=False, temperature=0.5,
                                     top_k=3, top_p=0.5, no_repeat_ngram_size=3)
    assert greedy.length_penalty == default.length_penalty
    assert greedy.early_stopping == default.early_stopping
    assert (greedy.temperature, greedy.top_k, greedy.top_p) == \
        (default.temperature, default.top_k, default.top_p)
    assert greedy.no_repeat_ngram_size == 3
    assert (greedy.decoder_start_token_id, greedy.eos_token_id, greedy.pad_token_id,
            greedy.bos_token_id) == (2, 2, 1, 0)
    beams = build_generation_config("barto", BART_IDS, num_beams=2, max_new_tokens=8,
                                    length_penalty=2.0, early_stopping=False)
    assert (beams.length_penalty, beams.early_stopping) == (2.0, False)
    sampled = build_generation_config("barto", BART_IDS, num_beams=1, max_new_tokens=8,
                                      do_sample=True, temperature=0.5, top_k=3, top_p=0.5)
    assert (sampled.temperature, sampled.top_k, sampled.top_p) == (0.5, 3, 0.5)


def test_set_dtype_reaches_the_sub_configs_of_a_pair_and_the_older_key():
    from seq2seq_es.models.families import _set_dtype

    config = {"dtype": "float32", "torch_dtype": "float32", "model_type": "encoder-decoder",
              "encoder": {"model_type": "bert", "torch_dtype": "float32"},
              "decoder": {"model_type": "bert", "dtype": "float32"},
              "task_specific_params": {"summarization": {"num_beams": 4}}}
    _set_dtype(config, "bfloat16")
    assert (config["dtype"], config["torch_dtype"]) == ("bfloat16", "bfloat16")
    assert config["encoder"] == {"model_type": "bert", "torch_dtype": "bfloat16",
                                 "dtype": "bfloat16"}
    assert config["decoder"] == {"model_type": "bert", "dtype": "bfloat16"}
    assert config["task_specific_params"] == {"summarization": {"num_beams": 4}}
    plain = {"dtype": "float32"}
    _set_dtype(plain, "float16")
    assert plain == {"dtype": "float16"}     # no torch_dtype made up


def test_save_model_writes_the_dtype_of_the_weights_it_was_given(tmp_path):
    from seq2seq_es.models import load_model_and_tokenizer, save_model

    model, tokenizer = load_model_and_tokenizer("barto-tiny")
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    save_model(model, tmp_path / "bf16", state_dict=state, dtype="bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    # Loaded back for training or evaluation, the weights are fp32 (upcast exactly).
    tokenizer.save_pretrained(tmp_path / "bf16")
    reloaded, _ = load_model_and_tokenizer("barto-tiny", path=str(tmp_path / "bf16"))
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}


def test_a_checkpoints_leftover_decoding_settings_never_reach_the_loaded_model(tmp_path):
    from seq2seq_es.models import load_model_and_tokenizer, save_model

    model, tokenizer = load_model_and_tokenizer("barto-tiny")
    model.generation_config.num_beams = 4
    model.generation_config.forced_bos_token_id = 0
    save_model(model, tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["num_beams"] == 4
    loaded, _ = load_model_and_tokenizer("barto-tiny", path=str(tmp_path / "m"))
    assert loaded.generation_config.num_beams in (None, 1)    # the default, not 4
    assert loaded.generation_config.forced_bos_token_id is None
    assert loaded.generation_config.decoder_start_token_id == 2


def test_a_tokenizer_larger_than_the_models_output_rows_is_refused():
    from seq2seq_es.models.families import _check_vocabulary

    model = SimpleNamespace(get_output_embeddings=lambda: SimpleNamespace(
        weight=torch.zeros(10, 2)))
    _check_vocabulary(model, [0] * 10, "SRC", "model.path")       # as many tokens as rows
    _check_vocabulary(model, [0] * 8, "SRC", "model.path")        # fewer: padded vocabulary
    with pytest.raises(ConfigError, match="has 11 tokens but the model only 10") as err:
        _check_vocabulary(model, [0] * 11, "SRC", "model.path")
    assert err.value.key == "model.path"


# ---------------------------------------------------------------------------------------------
# models/sharing.py


def test_a_shared_pair_whose_halves_differ_in_shape_is_refused_by_name():
    from transformers import BertConfig, EncoderDecoderConfig

    from seq2seq_es.models.sharing import SHARE_FLAG, Bert2BertModel

    def bert(hidden, **extra):
        return BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=16, **extra)

    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        bert(8), bert(16, is_decoder=True, add_cross_attention=True))
    setattr(config, SHARE_FLAG, True)
    with pytest.raises(ValueError, match="cannot share encoder weight embeddings"):
        Bert2BertModel(config)


def test_a_state_dict_holding_only_the_encoders_name_of_a_tie_exports_both_names():
    from seq2seq_es.models import load_model_and_tokenizer
    from seq2seq_es.models.sharing import standalone_state_dict

    model, _ = load_model_and_tokenizer("betoshare-tiny")
    names = model.encoder_to_decoder_names()
    state = {k: v for k, v in model.state_dict().items() if k not in set(names.values())}
    full = standalone_state_dict(model, state)
    for enc, dec in names.items():
        assert dec in full, dec
        torch.testing.assert_close(full[dec], full[enc], rtol=0, atol=0)
        assert full[enc].data_ptr() != full[dec].data_ptr()


# ---------------------------------------------------------------------------------------------
# models/convert_led.py


def test_convert_led_refuses_no_positions_an_odd_window_and_a_busy_out(tmp_path):
    from seq2seq_es.models.convert_led import _check_arguments

    out = str(tmp_path / "led")
    for max_positions, window, key in ((0, 2, "--max-positions"), (-4, 2, "--max-positions"),
                                       (16, 0, "--attention-window"),
                                       (15, 3, "--attention-window")):
        with pytest.raises(ConfigError) as err:
            _check_arguments("SRC", out, max_positions, window)
        assert err.value.key == key, (max_positions, window)
    _check_arguments("SRC", out, 2, 2)     # the smallest that works
    (tmp_path / "led").mkdir()
    _check_arguments("SRC", out, 2, 2)     # an empty folder is fine
    (tmp_path / "led" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty") as err:
        _check_arguments("SRC", out, 2, 2)
    assert err.value.key == "OUT"


def test_convert_led_sends_a_training_checkpoint_to_export_first(tmp_path):
    # It said "holds no usable model config: Unrecognized model ... model_type key".
    from seq2seq_es.models import convert_bart_to_led

    step = tmp_path / "run" / "checkpoints" / "step_00000002"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    (step / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        convert_bart_to_led(str(step), str(tmp_path / "led"), max_positions=64,
                            attention_window=16)
    assert err.value.key == "SRC" and f"export it first, `seq2seq-es export {step} MODEL_DIR`" \
        in err.value.reason


def test_convert_led_refuses_a_bart_that_scales_its_embeddings(tmp_path):
    from seq2seq_es.models import convert_bart_to_led, load_model_and_tokenizer, save_model

    bart, tokenizer = load_model_and_tokenizer("barto-tiny")
    bart.config.scale_embedding = True
    save_model(bart, tmp_path / "bart")
    tokenizer.save_pretrained(tmp_path / "bart")
    with pytest.raises(ConfigError, match="scale_embedding=true") as err:
        convert_bart_to_led(str(tmp_path / "bart"), str(tmp_path / "led"), max_positions=64,
                            attention_window=16)
    assert err.value.key == "SRC"
    assert not (tmp_path / "led").exists()


# ---------------------------------------------------------------------------------------------
# data/collator.py


class _Vocab:
    """A tokenizer's two methods sentence_start_ids reads."""

    def __init__(self, tokens):
        self.tokens = tokens

    def get_vocab(self):
        return {token: i for i, token in enumerate(self.tokens)}

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens).replace("Ġ", " ")


def test_sentence_enders_are_tokens_ending_in_a_stop_a_question_an_exclamation_or_an_ellipsis():
    from seq2seq_es.data.collator import sentence_start_ids

    vocab = _Vocab(["Hola", "fin.", "¿qué?", "¡vaya!", "y…", "Ġ.", ".com", "¿", "¡", "…y", "Ġ"])
    assert sentence_start_ids(vocab) == frozenset({1, 2, 3, 4, 5})


def test_buckets_that_the_window_does_not_divide_are_refused():
    from seq2seq_es.data.collator import Seq2SeqCollator

    collate = Seq2SeqCollator(1, 2, pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="not all multiples of 8"):
        collate.set_buckets((16, 12), (4,))
    collate.set_buckets((32, 16), (8, 4))
    assert (collate.source_buckets, collate.target_buckets) == ((16, 32), (4, 8))
    assert [collate.source_length(n) for n in (1, 16, 17, 32, 33)] == [16, 16, 32, 32, 40]
    assert [collate.target_length(n) for n in (4, 5, 8, 9)] == [4, 8, 8, 9]


# ---------------------------------------------------------------------------------------------
# engine/export.py


class _TiedWithCounter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight                 # tied: one Parameter, two names
        self.register_buffer("steps", torch.tensor([7, 8], dtype=torch.long))


def test_export_state_dict_casts_floats_only_and_keeps_every_tied_name():
    from seq2seq_es.engine.export import export_state_dict

    module = _TiedWithCounter()
    engine = SimpleNamespace(module=module, zero_optimization_stage=lambda: 0)
    state = export_state_dict(engine, "bf16", is_main=True)
    assert set(state) == {"embed.weight", "head.weight", "steps"}
    assert state["embed.weight"].dtype == torch.bfloat16
    assert state["head.weight"] is state["embed.weight"]
    assert state["steps"].dtype == torch.long and state["steps"].tolist() == [7, 8]
    torch.testing.assert_close(state["embed.weight"],
                               module.embed.weight.detach().to(torch.bfloat16))
    assert export_state_dict(engine, "fp32", is_main=True)["embed.weight"].dtype == torch.float32
    assert export_state_dict(engine, "bf16", is_main=False) is None


def test_export_hf_writes_weights_tokenizer_and_the_runs_generation_config(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    from seq2seq_es.engine.export import export_hf
    from seq2seq_es.models import build_generation_config, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("barto-tiny")
    engine = SimpleNamespace(module=model, zero_optimization_stage=lambda: 0)
    generation = build_generation_config("barto-tiny", tokenizer, num_beams=3, max_new_tokens=5)
    out = tmp_path / "final"
    export_hf(engine, tokenizer, generation, out, 0, SimpleNamespace(is_main=True), dtype="fp32")
    saved = GenerationConfig.from_pretrained(out)
    assert (saved.num_beams, saved.max_new_tokens) == (3, 5)
    assert (out / "tokenizer_config.json").is_file()
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# engine/inference.py


def test_resolve_saved_names_what_a_checkpoint_or_model_folder_lacks(tmp_path):
    from seq2seq_es.engine.inference import resolve_saved

    step = tmp_path / "run" / "checkpoints" / "step_00000040"
    step.mkdir(parents=True)
    with pytest.raises(Seq2SeqEsError, match="is incomplete: no trainer_state.json"):
        resolve_saved(step)
    (step / "trainer_state.json").write_text("{}")
    with pytest.raises(Seq2SeqEsError, match="has no DeepSpeed model states"):
        resolve_saved(step)
    (step / "mp_rank_00_model_states.pt").write_bytes(b"")
    saved = resolve_saved(step)
    assert (saved.kind, saved.path, saved.run_dir, saved.name) == ("deepspeed", step, None,
                                                                    "step_00000040")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(Seq2SeqEsError, match="has config.json but no weights"):
        resolve_saved(folder)
    (folder / "model.safetensors").write_bytes(b"")
    assert resolve_saved(folder).kind == "hf"


def test_saved_generation_reads_length_limits_as_transformers_does():
    import tempfile

    from seq2seq_es.engine.inference import saved_generation

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "generation_config.json").write_text(json.dumps(
            {"max_length": 20, "min_length": 5, "num_beams": 4, "early_stopping": True}))
        assert saved_generation(Path(folder)) == {
            "gen.max_new_tokens": "19", "gen.min_new_tokens": "4", "gen.num_beams": "4",
            "gen.early_stopping": "true"}


def test_another_task_or_model_than_the_runs_is_refused_by_its_flag():
    from seq2seq_es.engine.inference import SavedModel, check_same_names

    saved = SavedModel("hf", Path("run/final"), Path("run"), "final")
    cfg = SimpleNamespace(data=SimpleNamespace(task="mlsum"),
                          model=SimpleNamespace(name="barto"))
    check_same_names(saved, cfg, None, None)
    check_same_names(saved, cfg, "mlsum", "barto")
    for task, model, flag in (("sqac", None, "--task"), (None, "t5s", "--model")):
        with pytest.raises(ConfigError, match="run config says") as err:
            check_same_names(saved, cfg, task, model)
        assert err.value.key == flag


def test_how_the_work_is_spread_is_no_scoring_setting():
    from seq2seq_es.engine.inference import scoring_settings

    assert scoring_settings({"dist.zero_stage": "3", "dist.backend": "gloo",
                             "gen.num_beams": "4", "data.test_file": "t.jsonl"}) == {
        "gen.num_beams": "4", "data.test_file": "t.jsonl"}


def _task(name):
    from seq2seq_es.tasks import get_task
    return get_task(name)


def test_predict_rows_are_stripped_and_read_by_the_runs_columns_first(tmp_path):
    from seq2seq_es.engine.inference import source_of

    f = tmp_path / "in.jsonl"
    assert source_of({"source": "  hola  "}, None, f, 1) == "hola"
    mlsum = _task("mlsum")
    # a row of the run's data whose 'source' is another column (a news outlet)
    column = mlsum.formatter.source_column
    assert source_of({"source": "El País", column: " El texto. "}, None, f, 1, mlsum) == \
        "El texto."
    # a translation row written flat, with the source language as a key
    wmt = _task("wmt13-en-es")
    lang = wmt.formatter.source_lang
    assert source_of({"source": "otra", lang: "Hello."}, None, f, 1, wmt) == "Hello."


def test_a_prediction_spanning_lines_stays_on_its_own_line(tmp_path):
    from seq2seq_es.engine.inference import write_predictions

    write_predictions(tmp_path / "out.txt", ["a", "b"], ["uno\ndos", "tres"])
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "uno dos\ntres\n"


def test_a_cut_t5_source_keeps_its_closing_eos(tmp_path):
    from seq2seq_es.engine.inference import tokenize_sources
    from seq2seq_es.models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer("t5s-tiny")
    long = "El tren une Madrid y Barcelona en dos horas y media cada día del año."
    full = tokenizer(long)["input_ids"]
    assert len(full) > 6 and full[-1] == tokenizer.eos_token_id
    for side, kept in (("right", full[:5]), ("left", full[-6:-1])):
        [feature] = tokenize_sources([long], tokenizer, 6, side)
        assert feature == {"input_ids": kept + [tokenizer.eos_token_id], "length": len(full)}


def test_predict_refuses_to_write_over_its_input_before_loading_anything(tmp_path):
    from seq2seq_es.engine.inference import predict_main

    rows = tmp_path / "rows.txt"
    rows.write_text("Hola.\n")
    with pytest.raises(Seq2SeqEsError, match="is the input file"):
        predict_main([str(tmp_path / "missing_model"), "--input", str(rows),
                      "--output", str(rows), "--overwrite"])
    assert rows.read_text() == "Hola.\n"


def test_checkpoint_weights_may_name_a_tie_once_but_hold_nothing_unknown(tmp_path):
    from seq2seq_es.engine.inference import load_checkpoint_weights

    model = _TiedWithCounter()
    weights = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    step = tmp_path / "step_00000001"
    step.mkdir()
    torch.save({"module": {"embed.weight": weights, "steps": torch.tensor([1, 2])}},
               step / "mp_rank_00_model_states.pt")
    load_checkpoint_weights(model, step)
    assert torch.equal(model.head.weight.detach(), weights)
    torch.save({"module": {"embed.weight": weights, "steps": torch.tensor([1, 2]),
                           "extra.weight": weights}}, step / "mp_rank_00_model_states.pt")
    with pytest.raises(Seq2SeqEsError, match="1 unknown weights, e.g. extra.weight"):
        load_checkpoint_weights(model, step)
    # A folder without model states is named as such; one that a training run's rotation
    # removed while export or evaluate read it was an IndexError's traceback (an audit)
    (step / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(Seq2SeqEsError, match="FileNotFoundError: no model states in .*; it "
                                             "may be damaged"):
        load_checkpoint_weights(model, step)
    step.rmdir()
    with pytest.raises(Seq2SeqEsError) as gone:
        load_checkpoint_weights(model, step)
    assert str(gone.value).startswith(f"checkpoint {step} was removed while it was read: the "
                                      "run is training and train.keep_last rotated it away")


def test_a_run_decodes_with_its_own_config_not_its_exports_generation_file(tmp_path):
    from transformers import GenerationConfig

    from seq2seq_es.config import compose, dump
    from seq2seq_es.engine.inference import inference_config, resolve_saved

    run = tmp_path / "run"
    final = run / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (final / "model.safetensors").write_bytes(b"")
    cfg = compose(task="mlsum", model="barto-tiny", overrides={"gen.num_beams": "3"})
    dump(cfg, run / "config.yaml")
    GenerationConfig(num_beams=5, max_new_tokens=9, decoder_start_token_id=2).save_pretrained(final)
    resolved = inference_config(resolve_saved(run))
    assert (resolved.gen.num_beams, resolved.gen.max_new_tokens) == \
        (3, cfg.gen.max_new_tokens)
    assert resolved.model.path == str(final)


# ---------------------------------------------------------------------------------------------
# tasks/formatting.py


def _format(formatter, *rows):
    return list(formatter.format_rows(list(rows), list(range(len(rows))), "train"))


def test_a_nested_field_holding_a_bare_number_or_string_gets_the_text_message():
    from seq2seq_es.tasks.formatting import Problem, QAFormatter, TranslationFormatter

    qa = QAFormatter()
    for answers in ("1898", '"Madrid"'):
        [problem] = _format(qa, {"question": "¿Cuándo?", "context": "En 1898.",
                                 "answers": answers, "id": "a"})
        assert isinstance(problem, Problem) and problem.column == "answers"
        assert problem.reason.startswith("text, not the JSON or Python list/dict literal")
    [problem] = _format(TranslationFormatter("es", "en"), {"translation": '"hola"'})
    assert problem.reason.startswith("text, not the JSON"), problem


def test_a_single_answer_written_without_its_list_is_the_target():
    from seq2seq_es.tasks.formatting import Example, QAFormatter

    [example] = _format(QAFormatter(), {"question": "¿Dónde?", "context": "En Madrid.",
                                        "answers": {"text": " Madrid "}, "id": "q1"})
    assert isinstance(example, Example)
    assert (example.target, example.references, example.example_id) == \
        ("Madrid", ("Madrid",), "q1")


_HOLD = """
import sys, time
from pathlib import Path
from seq2seq_es.engine.run_lock import held_alone
held = held_alone(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_evaluate_of_one_run_and_split_is_refused_while_the_first_writes(tmp_path):
    # Both wrote run/evaluations/test_final; the first one's scores were gone without a word
    # (a concurrency audit). The second is refused before its model loads, naming the first.
    import subprocess
    import sys

    from engine_runs import REPO, subprocess_env
    from seq2seq_es.config import compose, dump

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (run / "final" / "model.safetensors").write_bytes(b"")  # never loaded: refused before
    dump(compose(task="mlsum", model="barto-tiny"), run / "config.yaml")
    env = subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-c", _HOLD,
                              str(run / "evaluations" / ".test_final.lock")],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, "-m", "seq2seq_es", "evaluate", str(run),
                                 "--split", "test"], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert second.returncode == 2, second.stderr[-3000:]
    assert (f"error: {run / 'evaluations' / 'test_final'} is being written by another evaluate "
            f"(pid {first.pid} on ") in second.stderr
    assert "give --output-dir DIR for this one" in second.stderr


def test_evaluating_a_run_that_trains_now_says_so(tmp_path):
    # A finished run resumed with more steps: evaluate scored the old final/ and recorded the
    # new config.yaml's settings beside it, without a word (a concurrency audit).
    from test_run_lock import end, hold_in_another_process

    from seq2seq_es.engine.inference import SavedModel, note_training_now

    run = tmp_path / "run"
    saved = SavedModel("hf", run / "final", run, "final")
    said = []
    note_training_now(saved, said.append)
    assert said == []
    holder = hold_in_another_process(run)
    try:
        note_training_now(saved, said.append)
    finally:
        end(holder)
    assert len(said) == 1 and said[0].startswith(f"note: {run} is training now (pid {holder.pid}")
    assert "its config.yaml is the training run's" in said[0]
