"""model.attention_window: fine-tuning LED at another sliding window than its checkpoint's (as the
Hugging Face config's attention_window does when a model is built). The window is set on the
loaded model; it must then compute what a model built with that window computes, on
transformers' attention and on our kernels, and its export must say the window it trained at."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LEDForConditionalGeneration
from transformers.models.led.modeling_led import LEDEncoderSelfAttention

from engine_runs import base_args, demo_files, run
from seq2seq_es.config import compose, not_applying
from seq2seq_es.engine.builders import get_model
from seq2seq_es.errors import ConfigError
from seq2seq_es.models import get_model_spec
from test_led_attention import GLOBALS, tiny_batch, tiny_led

WINDOW = 64  # the tiny LED's checkpoint has 16


def _windowed(window: int) -> LEDForConditionalGeneration:
    """tiny_led's weights in a model built with `window` (transformers' own way)."""
    source = tiny_led()
    config = source.config.to_dict()
    config["attention_window"] = [window] * source.config.encoder_layers
    built = LEDForConditionalGeneration(type(source.config).from_dict(config))
    built.load_state_dict(source.state_dict())
    return built.eval()


def _encoded(model, batch) -> torch.Tensor:
    """The encoder's output, where the window acts (the tiny decoder hides most of it)."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "global_attention_mask")}
    with torch.no_grad():  # FlexAttention has no backward on the CPU
        return model.get_encoder()(**inputs).last_hidden_state


@pytest.mark.parametrize("impl", ["hf", "sdpa", "flex"])
def test_a_window_set_after_loading_computes_what_a_model_built_with_it_does(impl):
    from seq2seq_es.kernels.led_attention import apply_led_attention

    batch = tiny_batch()
    assert set(GLOBALS) == {0, 1}  # global tokens in both rows: the window must not touch them
    built = _windowed(WINDOW)
    expected = _encoded(built, batch)
    with torch.no_grad():
        expected_logits = built(**batch).logits
    model = tiny_led().eval()
    before = _encoded(model, batch)
    get_model_spec("ledo-tiny").adapter.set_attention_window(model, WINDOW)
    if impl != "hf":
        apply_led_attention(model, impl)
    assert torch.allclose(_encoded(model, batch), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, expected_logits, atol=1e-5, rtol=1e-5)
    assert (before - expected).abs().max() > 1e-3  # the window changes what the encoder says
    assert model.config.attention_window == [WINDOW, WINDOW]


def test_get_model_sets_every_layer_and_the_padding_multiple():
    cfg = compose("xlsum", "ledo-tiny", overrides={"model.attention_window": WINDOW})
    model, tokenizer, spec = get_model(cfg)
    layers = [m for m in model.modules() if isinstance(m, LEDEncoderSelfAttention)]
    assert layers and {m.one_sided_attn_window_size for m in layers} == {WINDOW // 2}
    assert spec.adapter.collator_options(cfg, model, tokenizer)["pad_to_multiple_of"] == WINDOW
    default, _, _ = get_model(compose("xlsum", "ledo-tiny"))
    assert default.config.attention_window == [16, 16]


@pytest.mark.parametrize("window, says", [
    (63, "must be an even number of keys"),
    (-2, "must be an even number of keys"),
    (2, "of at least 4, or 0; got 2"),
    (3000, "3000: LED pads inputs to a multiple of the window, and data.max_source_length 4096 "
           "would pad to 6000, past the 4096 source positions of model 'ledo-tiny'"),
])
def test_a_window_that_cannot_work_is_refused_by_its_key(window, says):
    with pytest.raises(ConfigError) as error:
        compose("xlsum", "ledo-tiny", overrides={"model.attention_window": window,
                                                 "data.max_source_length": 4096})
    assert error.value.key == "model.attention_window" and says in str(error.value)


def test_another_family_does_not_read_it():
    cfg = compose("mlsum", "barto-tiny", overrides={"model.attention_window": WINDOW})
    assert not_applying(cfg)["model.attention_window"] == "barto-tiny is no LED"
    assert "model.attention_window" not in not_applying(compose("xlsum", "ledo-tiny"))


@pytest.mark.slow
def test_the_export_says_the_window_it_trained_at(tmp_path):
    files = demo_files(tmp_path / "data", train_size=8)
    out = tmp_path / "run"
    run("none", 1, base_args(files, out, model="ledo-tiny", steps=2,
                             extra=["--model.attention_window", str(WINDOW)]))
    exported = json.loads((out / "final" / "config.json").read_text())
    assert exported["attention_window"] == [WINDOW, WINDOW]
