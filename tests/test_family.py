"""The family adapters (models/family.py): one per registered family, asked instead of the name."""

from types import SimpleNamespace

import pytest

from seq2seq_es.errors import ConfigError, UnknownNameError
from seq2seq_es.models import FAMILIES, MODELS
from seq2seq_es.models.family import ADAPTERS, FAMILY_KEYS, family_of_model, get_family


def test_one_adapter_per_family_and_every_spec_has_its_own():
    assert tuple(ADAPTERS) == FAMILIES
    for spec in MODELS.values():
        assert spec.adapter is get_family(spec.family)
        assert spec.adapter.name == spec.family
    with pytest.raises(UnknownNameError, match="'gpt'"):
        get_family("gpt")


def _tokenizer(**ids):
    return SimpleNamespace(**ids)


def test_special_tokens_per_family():
    bart_like = _tokenizer(bos_token_id=0, pad_token_id=1, eos_token_id=2)
    for name in ("bart", "led"):
        tokens = get_family(name).special_tokens(bart_like)
        assert (tokens.decoder_start, tokens.eos, tokens.pad, tokens.bos) == (2, 2, 1, 0)
    t5 = get_family("t5").special_tokens(_tokenizer(pad_token_id=0, eos_token_id=1))
    assert (t5.decoder_start, t5.eos, t5.pad, t5.bos) == (0, 1, 0, None)
    beto = get_family("bert2bert").special_tokens(
        _tokenizer(cls_token_id=4, sep_token_id=5, pad_token_id=1))
    assert (beto.decoder_start, beto.eos, beto.pad, beto.bos) == (4, 5, 1, 4)
    with pytest.raises(ConfigError, match="no eos_token") as err:
        get_family("t5").special_tokens(_tokenizer(pad_token_id=0, eos_token_id=None))
    assert err.value.key == "model.path"


def test_keys_each_family_reads():
    reads = {name: {key for key in FAMILY_KEYS if adapter.reads(key)}
             for name, adapter in ADAPTERS.items()}
    assert reads == {"bart": {"model.attention"}, "bert2bert": set(), "t5": {"model.attention"},
                     "led": {"model.attention", "data.global_attention", "model.attention_window"}}
    assert all(adapter.reads("optim.lr") for adapter in ADAPTERS.values())


def test_attention_is_left_alone_where_the_family_has_no_kernels():
    model = object()
    assert get_family("bert2bert").apply_attention(model, "flex") is model
    for name in FAMILIES:
        assert get_family(name).apply_attention(model, "hf") is model
    assert get_family("bart").attention_impls == ("sdpa",)   # kernels/bart_attention.py


def test_only_led_has_collator_options():
    cfg = SimpleNamespace(data=SimpleNamespace(global_attention="first"))
    model = SimpleNamespace(config=SimpleNamespace(attention_window=[16, 32]))
    for name in ("bart", "t5", "bert2bert"):
        assert get_family(name).collator_options(cfg, model, None) is None
    assert get_family("led").collator_options(cfg, model, None) == {
        "pad_to_multiple_of": 32, "global_attention": "first", "sentence_end_ids": frozenset()}


def test_a_loaded_model_is_recognised_by_its_model_type():
    def model(model_type):
        return SimpleNamespace(config=SimpleNamespace(model_type=model_type))

    assert family_of_model(model("encoder-decoder")).name == "bert2bert"
    assert family_of_model(model("led")).name == "led"
    with pytest.raises(UnknownNameError, match="unknown lean-CE model type 'bert'"):
        family_of_model(model("bert"), kind="lean-CE model type")


def test_fp16_and_the_memory_estimates_family_terms():
    assert [name for name, a in ADAPTERS.items() if not a.fp16_safe] == ["t5"]
    from seq2seq_es.models.memory import (_attention_bytes, _t5_stack_bias_bytes, get_shape,
                                          padded_source)

    ledo, barto, t5s = get_shape("ledo"), get_shape("barto"), get_shape("t5s")
    assert padded_source(ledo, 1500) == 2048 and padded_source(barto, 1500) == 1500
    assert _attention_bytes(barto, 512, 128) == (0.0, 0.0)
    assert _t5_stack_bias_bytes(barto, 512, 128) == 0.0 < _t5_stack_bias_bytes(t5s, 512, 128)
    assert all(_attention_bytes(ledo, 2048, 128)) and all(_attention_bytes(t5s, 512, 128))


def _tiny_led(attention_dropout: float):
    from transformers import LEDConfig, LEDForConditionalGeneration

    return LEDForConditionalGeneration(LEDConfig(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, attention_window=[8],
        max_encoder_position_embeddings=64, max_decoder_position_embeddings=32, dropout=0.1,
        attention_dropout=attention_dropout, activation_dropout=0.0))


def _tiny_t5(dropout_rate: float):
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(
        vocab_size=64, d_model=16, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1,
        d_ff=32, dropout_rate=dropout_rate, decoder_start_token_id=0, pad_token_id=0))


@pytest.mark.parametrize("family, build, key", [("led", _tiny_led, "attention_dropout"),
                                                ("t5", _tiny_t5, "dropout_rate")])
def test_flex_with_attention_dropout_is_refused_never_changed(family, build, key):
    # One policy for both kernels: the model keeps its dropout; training on flex is refused
    # before training (check_flex_dropout) and by the kernel's first training forward.
    import torch

    adapter = get_family(family)
    model = build(0.1)
    assert adapter.flex_dropout(model) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="model.attention hf or sdpa") as err:
        adapter.check_flex_dropout(model, "flex")
    assert err.value.key == "model.attention"
    adapter.check_flex_dropout(model, "sdpa")
    adapter.apply_attention(model, "flex")
    assert getattr(model.config, key) == 0.1 and adapter.flex_dropout(model) == pytest.approx(0.1)
    ids = torch.randint(2, 64, (1, 8))
    with pytest.raises(ConfigError) as err:
        model.train()(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert err.value.key == key
    model = build(0.0)
    adapter.check_flex_dropout(model, "flex")
    for name in ("bart", "bert2bert"):
        get_family(name).check_flex_dropout(model, "flex")


def test_layer_stacks_and_packing_per_family():
    from transformers import BartConfig, BartForConditionalGeneration

    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32))
    for model, lengths in ((bart, [2, 1]), (_tiny_t5(0.0), [1, 1]), (_tiny_led(0.0), [1, 1])):
        stacks = family_of_model(model).layer_stacks(model)
        assert [len(stack) for stack in stacks] == lengths
    assert {name for name, a in ADAPTERS.items() if a.packed_attention} == {"bart", "t5"}
    assert [name for name, a in ADAPTERS.items() if a.relative_positions] == ["t5"]


@pytest.mark.slow
def test_training_refuses_flex_with_attention_dropout_before_loading_data(tmp_path):
    from engine_runs import base_args, demo_files, run

    files = demo_files(tmp_path / "data")
    args = base_args(files, tmp_path / "run", model="ledo-tiny", extra=[
        "--model.attention", "flex", "--model.dropout", "0.1"])
    args[args.index("--task") + 1] = "xlsum"  # one --task: a second one is refused
    proc = run("none", 1, args, check=False)
    assert proc.returncode == 2
    assert "model.attention" in proc.stderr and "flex attention has no attention" in proc.stderr
    assert "[train]" not in proc.stdout + proc.stderr  # refused before the data was read
    # Without dropout, on this CPU: flex cannot train here at all (no CPU backward).
    args[args.index("--model.dropout") + 1] = "0"
    proc = run("none", 1, args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: config key 'model.attention': flex attention trains on a GPU only" \
        in proc.stderr and "[train]" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("family", ["led", "t5"])
def test_training_with_flex_off_a_gpu_is_refused_before_the_data_loads(family):
    # torch's FlexAttention has no CPU backward: the run died with its NotImplementedError at
    # the first step, after loading everything.
    adapter = get_family(family)
    with pytest.raises(ConfigError, match="flex attention trains on a GPU only") as err:
        adapter.check_flex_device("flex", "cpu")
    assert err.value.key == "model.attention"
    adapter.check_flex_device("flex", "cuda")
    adapter.check_flex_device("sdpa", "cpu")
    get_family("bert2bert").check_flex_device("flex", "cpu")  # no kernels: model.attention unread
    get_family("bart").check_flex_device("flex", "cpu")  # no flex kernel: validate refuses flex
