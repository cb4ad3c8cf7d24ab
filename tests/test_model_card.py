"""final/README.md, the model card every exporting run writes: how to feed the model without
this package (source layout and length, decoding settings, LED's global attention) and how its
scores compare answers."""

from __future__ import annotations

import json

import pytest

from seq2seq_es.config import compose
from seq2seq_es.engine.hub import input_notes, model_card, write_model_card
from seq2seq_es.models import get_model_spec
from seq2seq_es.tasks import task_for


def notes(task: str, model: str, **overrides: str) -> list[str]:
    cfg = compose(task=task, model=model, overrides=overrides)
    return input_notes(cfg, task_for(cfg.data), get_model_spec(cfg.model.name))


def test_ledo_says_where_its_global_attention_goes():
    # transformers' LED given no global_attention_mask attends globally to no token: a user of
    # final/ got other encoder states than the run's (0.03 apart on a 4-step model) unwarned.
    [source, decoding, loading, attention] = notes("xlsum", "ledo-tiny",
                                                   **{"data.max_source_length": "2048"})
    assert source == ("Source: the `text` text as it is, with no task prefix; at most 2048 "
                      "tokens (longer sources lose their end).")
    # an export of a checkpoint has no scores: the settings are the run's, not "the scores'"
    assert decoding.startswith("Decoding: `generation_config.json` holds the run's decoding "
                               "settings, those of any scores listed here")
    assert ("(`tokenizer.decode(ids, skip_special_tokens=True)`) stripped of surrounding "
            "spaces, in Unicode NFC (`seq2seq_es.tasks.formatting.clean_prediction`)") in decoding
    assert loading.startswith("Loading: `AutoModelForSeq2SeqLM.from_pretrained(FOLDER)`")
    assert loading.endswith("(from transformers).")
    # a BERT2BERT pair is transformers' EncoderDecoderModel, which the Auto class does not load
    assert any(note.startswith("Loading: `EncoderDecoderModel.from_pretrained(FOLDER)`")
               for note in notes("mlsum", "beto2beto-tiny"))
    assert attention.startswith("Global attention on the first token (`data.global_attention "
                                "first`): pass `global_attention_mask` (1 there, 0 elsewhere)")
    [*_, prefix] = notes("xlsum", "ledo-tiny", **{"data.global_attention": "prefix:4"})
    assert prefix.startswith("Global attention on the first 4 tokens (`data.global_attention "
                             "prefix:4`)")
    assert not [n for n in notes("xlsum", "barto-tiny") if "lobal attention" in n]


@pytest.mark.parametrize("chosen", ["first", "prefix:3", "sentences"])
def test_the_cards_global_attention_code_builds_the_mask_the_run_was_fed(chosen):
    # The sample was `mask[:, 0] = 1` for every setting: a prefix:3 model copied from its card
    # was fed otherwise than it was scored.
    import re

    import torch

    from seq2seq_es.data.collator import Seq2SeqCollator, sentence_start_ids
    from seq2seq_es.models import load_model_and_tokenizer

    [*_, attention] = notes("xlsum", "ledo-tiny", **{"data.global_attention": chosen})
    code = re.search(r"as `(.+?)`", attention).group(1)
    _, tokenizer = load_model_and_tokenizer("ledo-tiny")
    input_ids = tokenizer(["Uno dos. Tres cuatro cinco. ¿Seis?", "Siete ocho nueve diez once."],
                          padding=True, return_tensors="pt").input_ids
    scope = {"torch": torch, "input_ids": input_ids, "END": sentence_start_ids(tokenizer)}
    exec(code, scope)
    collator = Seq2SeqCollator(tokenizer.pad_token_id, 2, global_attention=chosen,
                               sentence_end_ids=sentence_start_ids(tokenizer))
    expected = collator._global_mask(input_ids, torch.ones_like(input_ids))
    assert torch.equal(scope["mask"], expected), (code, scope["mask"], expected)
    assert int(expected.sum()) > input_ids.shape[0] or chosen == "first"


def test_a_card_names_the_hub_dataset_only_for_a_run_that_trained_on_it(tmp_path):
    # A run on local files claimed `datasets: - csebuetnlp/xlsum` in its hub metadata.
    from seq2seq_es.engine.hub import trained_on_hub_dataset

    hub = compose(task="xlsum", model="ledo-tiny")
    assert trained_on_hub_dataset(hub, task_for(hub.data)) == "csebuetnlp/xlsum"
    local = compose(task="xlsum", model="ledo-tiny", overrides={
        "data.train_file": "tests/fixtures/xlsum/train.jsonl",
        "data.validation_file": "tests/fixtures/xlsum/validation.jsonl"})
    assert trained_on_hub_dataset(local, task_for(local.data)) is None


def test_qa_says_its_prompt_and_its_answer_convention():
    lines = notes("sqac", "t5s-tiny")
    assert lines[0].startswith("Source: `question: {question} context: {context}`, from the "
                               "`question` and `context` texts;")
    assert "`exact_match` compares answers under the `mlqa-es` convention" in " ".join(lines)
    assert "`token_f1` compares answers under the `mlqa-es` convention" in " ".join(lines)


@pytest.mark.parametrize("task, says", [
    ("miam", "earlier turns of the dialogue, oldest first, each as `<speaker>: <utterance>`"),
    ("bisect", "it writes sentences joined by ` <SPLIT> `"),
    ("wmt13-es-en", "the `translation.es` text as it is, with no task prefix; it writes the "
                    "`en` one"),
])
def test_every_task_kind_describes_its_source(task, says):
    assert says in notes(task, "barto-tiny")[0]


def test_the_card_is_written_from_the_run_folder(tmp_path):
    cfg = compose(task="sqac", model="barto-tiny")
    (tmp_path / "final").mkdir()
    (tmp_path / "final_results.json").write_text(json.dumps({
        "task": "sqac", "model": "barto-tiny", "main_metric": "token_f1", "best_step": 4,
        "steps": 6, "validation": {"token_f1": 50.0}, "test": {"token_f1": 40.0}}))
    card = write_model_card(tmp_path, cfg).read_text()
    assert card == model_card(json.loads((tmp_path / "final_results.json").read_text()), None,
                              task_for(cfg.data).hub_id, notes("sqac", "barto-tiny"))
    inputs = card.split("## Inputs\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert inputs == [f"- {line}" for line in notes("sqac", "barto-tiny")]
    assert "| token_f1 | 40.0000 |" in card.split("## test", 1)[1]


def test_the_exported_tokenizer_cuts_as_the_run_did_and_the_runs_keeps_its_own(tmp_path):
    # MIAM keeps the newest turns (cut on the left) at 512 tokens: plain transformers on
    # final/ cut the history's end at the model's 1024
    from transformers import AutoTokenizer

    from seq2seq_es.engine.export import save_tokenizer
    from seq2seq_es.models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer("barto-tiny")
    save_tokenizer(tokenizer, tmp_path, 512, "left")
    saved = AutoTokenizer.from_pretrained(tmp_path)
    assert (saved.model_max_length, saved.truncation_side) == (512, "left")
    assert (tokenizer.model_max_length, tokenizer.truncation_side) == (1024, "right")
    ids = saved("uno dos tres " * 400, truncation=True)["input_ids"]
    assert len(ids) == 512 and ids[-1] == tokenizer.eos_token_id


def test_a_split_and_rephrase_card_says_how_its_markers_are_written():
    # The card's recipe (decode, strip) gave "SPLIT" where the run wrote "<SPLIT>" (a tiny
    # vocabulary without '<'): the package's cleaning is named, each spelling it rewrites too.
    import re

    from seq2seq_es.tasks import get_task
    from seq2seq_es.tasks.formatting import clean_prediction

    [_, decoding, *_] = notes("bisect", "betoshare-tiny")
    spellings = re.search(r"sentence marker \((.+?)\) written ` <SPLIT> `", decoding).group(1)
    for spelling in re.findall(r"`([^`]+)`", spellings):
        assert clean_prediction(get_task("bisect"), f"Uno. {spelling} Dos.") == "Uno. <SPLIT> Dos."
    assert "sentence marker" not in notes("mlsum", "barto-tiny")[1]


def test_a_bf16_card_loads_in_fp32_as_the_package_computes():
    # transformers computes in config.json's dtype by default: a bf16 export decoded otherwise
    cfg = compose(task="mlsum", model="barto-tiny")
    [*_, loading] = input_notes(cfg, task_for(cfg.data), get_model_spec("barto-tiny"), "bf16")
    assert loading.startswith("Loading: `AutoModelForSeq2SeqLM.from_pretrained(FOLDER, "
                              "dtype=torch.float32)`")
    assert "The weights are bf16" in loading
    # and the card a bf16-exporting run writes into its final/ says so
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder)
        (run / "final").mkdir()
        (run / "final_results.json").write_text(json.dumps({
            "task": "mlsum", "model": "barto-tiny", "main_metric": "rougeL", "best_step": 4,
            "steps": 6, "validation": {"rougeL": 50.0}, "test": None}))
        bf16 = compose(task="mlsum", model="barto-tiny", overrides={"train.export_dtype": "bf16"})
        assert "dtype=torch.float32" in write_model_card(run, bf16).read_text()
        assert "dtype=torch.float32" not in write_model_card(run, cfg).read_text()
