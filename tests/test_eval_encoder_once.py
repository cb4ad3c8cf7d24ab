"""Validation encodes each batch once (evaluation.encode_sources): the loss forward and the
generation share the encoder's outputs, which gave the same loss and predictions as encoding
twice, for every family (LED with its global attention, BERT2BERT's EncoderDecoderModel), and
the encoder runs once per batch instead of twice (a third of a validation's time on short
outputs in a scale audit)."""

from __future__ import annotations

import pytest
import torch

from engine_runs import demo_files
from seq2seq_es.config import compose
from seq2seq_es.engine.builders import get_collator, get_generation_config, get_model, get_split
from seq2seq_es.engine.distributed import DistEnv
from seq2seq_es.engine.evaluation import GENERATE_INPUTS, batch_features, encode_sources
from seq2seq_es.tasks import get_task


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("encoder_once") / "data", train_size=4)


def _validation(files, tmp_path, name: str):
    """(cfg, model, tokenizer, spec, validation split) of `name` on the demo's mlsum files,
    beam search of 2 over at most 6 tokens, fp32."""
    cfg = compose(task="mlsum", model=name, overrides={
        "data.train_file": files["train"], "data.validation_file": files["validation"],
        "data.cache_dir": str(tmp_path / "cache"), "data.max_source_length": "64",
        "data.max_target_length": "32", "gen.num_beams": "2", "gen.max_new_tokens": "6",
        "gen.min_new_tokens": "0", "train.precision": "fp32"})
    model, tokenizer, spec = get_model(cfg)
    data = get_split(cfg, get_task("mlsum"), tokenizer, model, "validation", None, lambda m: None)
    return cfg, model, tokenizer, spec, data


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny", "ledo-tiny", "beto2beto-tiny"])
def test_shared_encoder_outputs_give_the_same_loss_and_predictions(files, name, tmp_path):
    cfg, model, tokenizer, spec, data = _validation(files, tmp_path, name)
    model.eval()
    batch = dict(get_collator(cfg, spec, tokenizer, model)(batch_features(data.tokenized,
                                                                          [0, 1, 2])))
    batch.pop("labels")
    generation = get_generation_config(cfg, spec, tokenizer)
    inputs = {k: batch[k] for k in GENERATE_INPUTS if k in batch}
    encoder = model.get_encoder()
    calls = []
    hook = encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            twice = (model(**batch).logits, model.generate(**inputs, generation_config=generation))
            assert len(calls) == 2
            calls.clear()
            encoded = encode_sources(model, batch)
            once = (model(**batch, encoder_outputs=encoded).logits,
                    model.generate(**inputs, encoder_outputs=encoded,
                                   generation_config=generation))
            assert len(calls) == 1
    finally:
        hook.remove()
    assert torch.equal(once[0], twice[0])
    assert torch.equal(once[1], twice[1])
    if name == "ledo-tiny":
        assert "global_attention_mask" in inputs


def test_a_validation_with_generation_encodes_each_batch_once(files, tmp_path):
    from seq2seq_es.engine.evaluation import evaluate

    cfg, model, tokenizer, spec, data = _validation(files, tmp_path, "barto-tiny")
    task = get_task("mlsum")
    calls = []
    hook = model.get_encoder().register_forward_hook(lambda *args: calls.append(1))
    try:
        results = evaluate(model, tokenized=data.tokenized, examples=data.examples,
                           collator=get_collator(cfg, spec, tokenizer, model),
                           tokenizer=tokenizer,
                           generation_config=get_generation_config(cfg, spec, tokenizer),
                           task=task, env=DistEnv(0, 1, 0, "127.0.0.1", 0, "none"),
                           batch_size=2, zero_stage=0, bf16=False, step=0, out_dir=None)
    finally:
        hook.remove()
    batches = -(-len(data.tokenized) // 2)
    assert len(calls) == batches and "eval/rougeL" in results


def test_the_validation_loss_forward_fills_no_decoder_cache(files, tmp_path):
    # Without labels transformers fills a key/value cache per decoder layer whenever use_cache
    # is on: the loss forward never reads it (generate keeps its own), so it is turned off.
    from seq2seq_es.engine.evaluation import evaluate

    cfg, model, tokenizer, spec, data = _validation(files, tmp_path, "barto-tiny")
    caches = []
    hook = model.register_forward_hook(
        lambda module, inputs, output: caches.append(output.past_key_values))
    try:
        evaluate(model, tokenized=data.tokenized, examples=data.examples,
                 collator=get_collator(cfg, spec, tokenizer, model), tokenizer=tokenizer,
                 generation_config=get_generation_config(cfg, spec, tokenizer),
                 task=get_task("mlsum"), env=DistEnv(0, 1, 0, "127.0.0.1", 0, "none"),
                 batch_size=2, zero_stage=0, bf16=False, step=0, out_dir=None, generate=False)
    finally:
        hook.remove()
    assert caches and all(cache is None for cache in caches)


def test_generation_batches_go_longest_first(files, tmp_path):
    # The longest batch first: a batch too long for memory fails at once, not at the end of a
    # long evaluation, and similar lengths share a batch (less padding).
    from seq2seq_es.engine.evaluation import generate_texts
    from seq2seq_es.engine.inference import tokenize_sources

    cfg, model, tokenizer, spec, _ = _validation(files, tmp_path, "barto-tiny")
    words = "uno dos tres cuatro cinco seis siete ocho nueve diez".split()
    sources = [" ".join(words[:n]) for n in (2, 9, 4, 10, 1, 6)]
    features = tokenize_sources(sources, tokenizer, 64, "right")
    widths, generate = [], model.generate

    def recording(**inputs):
        widths.append(inputs["input_ids"].shape[1])
        return generate(**inputs)

    model.generate = recording
    try:
        predictions = generate_texts(
            model, features=features, collator=get_collator(cfg, spec, tokenizer, model),
            tokenizer=tokenizer, generation_config=get_generation_config(cfg, spec, tokenizer),
            task=get_task("mlsum"), env=DistEnv(0, 1, 0, "127.0.0.1", 0, "none"), batch_size=2,
            zero_stage=0, bf16=False)
    finally:
        del model.generate
    assert len(predictions) == len(sources) and len(widths) == 3
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
