"""LED attention implementations (seq2seq_es.kernels.led_attention) against transformers' own, on a tiny LED.

The batch has padding in one row, several global tokens at different places per row, and a source length
(390) that is not a multiple of the attention window (16), so LED pads it inside the encoder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LEDConfig, LEDForConditionalGeneration
from transformers.models.led.modeling_led import LEDDecoderAttention, LEDEncoderSelfAttention

from seq2seq_es.errors import ConfigError, UnknownNameError
from seq2seq_es.bench import led as bench_led
from seq2seq_es.kernels.led_attention import (
    FLEX_BLOCK_SIZE,
    FlexLEDEncoderSelfAttention,
    SdpaLEDDecoderAttention,
    SdpaLEDEncoderSelfAttention,
    apply_led_attention,
    build_encoder_layout,
    build_flex_block_mask,
    find_row_spans,
    led_attention_impl,
    make_flex_mask_mod,
    padded_slot_count,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC_LEN, TGT_LEN, VOCAB = 390, 9, 120
GLOBALS = {0: [0, 37, 90, 250], 1: [0, 64]}
PADDED_FROM = 300  # row 1 is padding from here on


def tiny_led(attention_dropout: float = 0.0) -> LEDForConditionalGeneration:
    config = LEDConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, attention_window=[16, 16],
        max_encoder_position_embeddings=4096, max_decoder_position_embeddings=128, dropout=0.0,
        attention_dropout=attention_dropout, activation_dropout=0.0)
    torch.manual_seed(0)
    return LEDForConditionalGeneration(config)


def tiny_batch(with_globals: bool = True, decoder_padding: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (2, SRC_LEN), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, PADDED_FROM:] = 0
    input_ids[1, PADDED_FROM:] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "labels": torch.randint(3, VOCAB, (2, TGT_LEN), generator=generator)}
    if with_globals:
        global_attention_mask = torch.zeros_like(input_ids)
        for row, positions in GLOBALS.items():
            global_attention_mask[row, positions] = 1
        batch["global_attention_mask"] = global_attention_mask
    if decoder_padding:
        decoder_attention_mask = torch.ones(2, TGT_LEN, dtype=torch.long)
        decoder_attention_mask[1, 6:] = 0
        batch["decoder_attention_mask"] = decoder_attention_mask
    return batch


def train_pass(model, impl: str, batch: dict) -> tuple:
    apply_led_attention(model, impl)
    model.train()
    model.zero_grad(set_to_none=True)
    output = model(**batch, use_cache=False)
    output.loss.backward()
    gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return output, gradients


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-4) -> None:
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= rtol * max(scale, 1e-3), f"{what}: max error {error:.3e} against scale {scale:.3e}"


@pytest.mark.parametrize("with_globals, decoder_padding", [(True, False), (True, True), (False, False)])
def test_sdpa_outputs_and_all_gradients_equal_hf(with_globals, decoder_padding):
    model = tiny_led()
    batch = tiny_batch(with_globals, decoder_padding)
    reference, reference_grads = train_pass(model, "hf", batch)
    output, grads = train_pass(model, "sdpa", batch)

    assert_close(output.encoder_last_hidden_state, reference.encoder_last_hidden_state, "encoder output")
    assert_close(output.logits, reference.logits, "logits")
    assert_close(output.loss, reference.loss, "loss")
    assert set(grads) == set(reference_grads)
    for name, expected in reference_grads.items():
        assert_close(grads[name], expected, f"gradient of {name}")
    # The global projections take part (and get gradients) exactly when global tokens exist.
    global_names = {name for name, _ in model.named_parameters() if "_global." in name}
    all_names = {name for name, _ in model.named_parameters()}
    assert set(reference_grads) == (all_names if with_globals else all_names - global_names)
    assert all(reference_grads[name].abs().max() > 0 for name in global_names if with_globals)


def test_sdpa_equals_hf_under_gradient_checkpointing():
    model = tiny_led()
    bench_led.enable_checkpointing(model)
    batch = tiny_batch(decoder_padding=True)
    reference, reference_grads = train_pass(model, "hf", batch)
    output, grads = train_pass(model, "sdpa", batch)
    assert_close(output.loss, reference.loss, "loss")
    for name, expected in reference_grads.items():
        assert_close(grads[name], expected, f"gradient of {name}")


def test_sdpa_with_output_attentions_falls_back_to_the_same_weights():
    model = tiny_led().eval()
    batch = tiny_batch(decoder_padding=True)
    with torch.no_grad():
        reference = apply_led_attention(model, "hf")(**batch, output_attentions=True)
        output = apply_led_attention(model, "sdpa")(**batch, output_attentions=True)
    assert_close(output.logits, reference.logits, "logits")
    for kind in ("encoder_attentions", "encoder_global_attentions", "decoder_attentions", "cross_attentions"):
        for layer, (actual, expected) in enumerate(zip(getattr(output, kind), getattr(reference, kind))):
            assert_close(actual, expected, f"{kind}[{layer}]")


def generate(model, impl: str, batch: dict):
    apply_led_attention(model, impl)
    model.eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "global_attention_mask")}
    with torch.no_grad():
        return model.generate(**inputs, num_beams=2, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                              output_scores=True, return_dict_in_generate=True)


def test_beam_search_gives_the_same_tokens_with_sdpa():
    model = tiny_led()
    batch = tiny_batch()
    reference = generate(model, "hf", batch)
    result = generate(model, "sdpa", batch)
    assert reference.sequences.shape == (2, 9)
    assert torch.equal(result.sequences, reference.sequences)
    assert_close(result.sequences_scores, reference.sequences_scores, "beam scores")


def test_flex_forward_and_generation_equal_sdpa_and_hf():
    """One FlexAttention compile on the CPU (forward only there); generation reuses it (same shapes)."""
    model = tiny_led().eval()
    batch = tiny_batch(decoder_padding=True)
    with torch.no_grad():
        reference = apply_led_attention(model, "sdpa")(**batch)
        output = apply_led_attention(model, "flex")(**batch)
    assert all(type(m) is FlexLEDEncoderSelfAttention for m in model.modules()
               if isinstance(m, LEDEncoderSelfAttention))
    assert_close(output.encoder_last_hidden_state, reference.encoder_last_hidden_state, "encoder output")
    assert_close(output.logits, reference.logits, "logits")
    assert torch.equal(generate(model, "flex", batch).sequences, generate(model, "hf", batch).sequences)


@pytest.mark.parametrize("padded", [True, False])
def test_flex_on_leds_usual_batches_equals_sdpa(padded):
    """Only <s> global and right padding (what our collator gives LEDO): the layout cache finds the
    row spans, so the flex mask is index arithmetic, and the encoder output is still sdpa's."""
    from seq2seq_es.kernels import led_attention

    model = tiny_led().eval()
    batch = tiny_batch(with_globals=False)
    batch["global_attention_mask"] = torch.zeros_like(batch["input_ids"])
    batch["global_attention_mask"][:, 0] = 1
    if not padded:
        batch["attention_mask"][1] = 1
    with torch.no_grad():
        reference = apply_led_attention(model, "sdpa")(**batch)
        output = apply_led_attention(model, "flex")(**batch)
    layout = led_attention._layout_cache.last_identity[4]
    assert layout.row_spans is not None and layout.row_spans.global_counts == (1, 1)
    assert make_flex_mask_mod(layout, 8).__name__ == "row_spans_mask_mod"
    assert_close(output.encoder_last_hidden_state, reference.encoder_last_hidden_state, "encoder output")


def led_reference_mask(key_padding, is_global, window) -> torch.Tensor:
    """[B, L, L]: what LED lets a non-global row attend to, written from its definition."""
    positions = torch.arange(key_padding.shape[1])
    band = (positions[:, None] - positions[None, :]).abs() <= window
    return (band[None] & ~key_padding[:, None, :]) | is_global[:, None, :]


def block_table(counts: torch.Tensor, indices: torch.Tensor, n_kv_blocks: int) -> torch.Tensor:
    """[B, n_q, n_kv] bool from a BlockMask's (counts, indices) with a broadcast head."""
    batch, _, n_q, _ = indices.shape
    table = torch.zeros(batch, n_q, n_kv_blocks, dtype=torch.bool)
    for b in range(batch):
        for q in range(n_q):
            table[b, q, indices[b, 0, q, :counts[b, 0, q]].long()] = True
    return table


# (globals of row 0, of row 1, row 1's padding, sequence length) and which mask_mod
# that batch gets: scattered globals read the layout's tensors; LED's usual shape (globals first,
# right padding) is index arithmetic over each row's span.
MASK_CASES = {
    "scattered globals": ([0, 130, 500, 1999], [5], slice(1300, None), 2000, "slots_and_band_mask_mod"),
    "no globals, left padding": ([], [], slice(0, 700), 2000, "band_mask_mod"),
    "no globals, right padding": ([], [], slice(1300, None), 2000, "row_spans_mask_mod"),
    "prefix globals, padding": ([0, 1, 2], [0], slice(1300, None), 2000, "row_spans_mask_mod"),
    "one row without globals": ([0, 1], [], slice(1300, None), 2000, "row_spans_mask_mod"),
    "equal rows, <s> global": ([0], [0], slice(0, 0), 2000, "row_spans_mask_mod"),
    "equal rows, no globals": ([], [], slice(0, 0), 2000, "row_spans_mask_mod"),
    "equal rows, whole tiles": ([], [], slice(0, 0), 2048, "row_spans_mask_mod"),
}


@pytest.mark.parametrize("case", MASK_CASES)
def test_flex_block_mask_attends_exactly_what_led_attends(case):
    """The block table plus the element mask, decoded back to sequence positions, equals LED's pattern
    for every non-padding row, and the table really skips blocks (else it would be dense attention)."""
    globals_0, globals_1, padding, seq_len, mask_mod_name = MASK_CASES[case]
    batch, window = 2, 200
    key_padding = torch.zeros(batch, seq_len, dtype=torch.bool)
    key_padding[1, padding] = True
    is_global = torch.zeros(batch, seq_len, dtype=torch.bool)
    is_global[0, globals_0] = True
    is_global[1, globals_1] = True
    num_slots = int(is_global.sum(1).max())
    layout = build_encoder_layout(key_padding, is_global, num_slots,
                                  row_spans=find_row_spans(key_padding, is_global))
    assert make_flex_mask_mod(layout, window).__name__ == mask_mod_name
    block_mask = build_flex_block_mask(layout, window)
    n_slot_keys = padded_slot_count(num_slots)
    kv_len = n_slot_keys + seq_len
    n_kv_blocks = -(-kv_len // FLEX_BLOCK_SIZE)

    partial = block_table(block_mask.kv_num_blocks, block_mask.kv_indices, n_kv_blocks)
    full = block_table(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, n_kv_blocks)
    assert not (partial & full).any()
    to_elements = lambda table: table.repeat_interleave(FLEX_BLOCK_SIZE, 1).repeat_interleave(  # noqa: E731
        FLEX_BLOCK_SIZE, 2)[:, :seq_len, :kv_len]
    b = torch.arange(batch)[:, None, None]
    q = torch.arange(seq_len)[None, :, None]
    kv = torch.arange(kv_len)[None, None, :]
    element_mask = make_flex_mask_mod(layout, window)(b, None, q, kv)
    attended = (to_elements(partial) & element_mask) | to_elements(full)  # [B, L, slots + L]

    band_part = attended[:, :, n_slot_keys:]
    as_positions = band_part.clone()
    for row in range(batch):
        for slot in range(n_slot_keys):
            hit = attended[row, :, slot]
            if hit.any():
                assert slot < is_global[row].sum(), "an empty global slot is attended"
                as_positions[row, hit, layout.slot_positions[row, slot]] = True
    assert not (band_part & is_global[:, None, :]).any(), "a global key is counted twice"
    expected = led_reference_mask(key_padding, is_global, window)
    live_rows = ~key_padding
    assert torch.equal(as_positions[live_rows], expected[live_rows])
    assert full.any(), "no block is marked full: every tile would evaluate the element mask"
    n_q_blocks = -(-seq_len // FLEX_BLOCK_SIZE)
    assert (partial | full).sum() < batch * n_q_blocks * n_kv_blocks / 2, "the block mask is not sparse"


def test_state_dict_and_parameters_are_unchanged_and_hf_restores():
    model = tiny_led()
    keys = list(model.state_dict().keys())
    parameters = {name: p for name, p in model.named_parameters()}
    decoder_config = model.led.decoder.config
    for impl in ("sdpa", "flex", "sdpa", "hf"):
        apply_led_attention(model, impl)
        assert led_attention_impl(model) == impl
        assert list(model.state_dict().keys()) == keys
        assert all(parameters[name] is p for name, p in model.named_parameters())
        assert len(list(model.parameters())) == len(parameters)
    assert all(type(m) is LEDEncoderSelfAttention for m in model.modules()
               if isinstance(m, LEDEncoderSelfAttention))
    assert all(type(m) is LEDDecoderAttention for m in model.modules() if isinstance(m, LEDDecoderAttention))
    assert model.led.decoder.config is decoder_config is model.config
    apply_led_attention(model, "sdpa")
    assert all(type(m) is SdpaLEDEncoderSelfAttention for m in model.modules()
               if isinstance(m, LEDEncoderSelfAttention))
    assert all(type(m) is SdpaLEDDecoderAttention for m in model.modules() if isinstance(m, LEDDecoderAttention))
    assert model.config._attn_implementation == "eager"  # the shared config is untouched


def test_bad_names_and_flex_dropout_give_clear_errors():
    model = tiny_led()
    with pytest.raises(UnknownNameError, match="'xformers'.*flex, hf, sdpa"):
        apply_led_attention(model, "xformers")
    with pytest.raises(ConfigError, match="model.attention.*Linear has no LED encoder"):
        apply_led_attention(torch.nn.Linear(2, 2), "flex")
    with_dropout = apply_led_attention(tiny_led(attention_dropout=0.1), "flex").train()
    with pytest.raises(ConfigError, match="attention_dropout.*0.1"):
        with_dropout(**tiny_batch())


def test_bench_tiny_json_rows(capsys):
    status = bench_led.main(["--device", "cpu", "--tiny", "--json", "--lengths", "256",
                             "--impl", "hf,sdpa,flex", "--steps", "1"])
    assert status == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(r["impl"], r["checkpointing"]) for r in rows] == [
        ("hf", False), ("hf", True), ("sdpa", False), ("sdpa", True), ("flex", False), ("flex", True)]
    expected_flops = bench_led.model_flops_per_step(bench_led.TINY_SHAPE, 256, 16, 1, 1)
    for row in rows:
        assert set(row) == set(bench_led.ROW_KEYS)
        assert (row["src_len"], row["tgt_len"], row["batch"], row["device"]) == (256, 16, 1, "cpu")
        if row["impl"] == "flex":
            assert row["status"] == "skipped" and "CPU" in row["error"]
            continue
        assert row["status"] == "ok" and row["error"] is None
        assert row["step_s"] > 0
        assert row["src_tok_s"] == pytest.approx(256 / row["step_s"])
        assert row["model_tflop_per_step"] == pytest.approx(expected_flops / 1e12)
        assert row["model_tflop_s"] == pytest.approx(expected_flops / row["step_s"] / 1e12)
        assert row["peak_gib"] is None  # no CUDA allocator on the CPU


def test_model_flops_count_window_not_full_attention():
    shape = bench_led.LED_BASE_SHAPE
    flops_16k = bench_led.model_flops_per_step(shape, 16384, 512, 1, 1)
    flops_8k = bench_led.model_flops_per_step(shape, 8192, 512, 1, 1)
    # Window attention is linear in the source length: doubling it less than doubles the work.
    assert 1.7 < flops_16k / flops_8k < 2.0
    assert 6e12 < flops_16k < 8e12


def test_a_cpu_allocation_failure_is_an_oom_row():
    # torch's CPU allocator says "can't allocate memory": the row read `error`, not `oom`
    assert bench_led._is_out_of_memory(RuntimeError(
        "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 13743895347200 bytes. Error code 12 (Cannot allocate memory)"))
    assert not bench_led._is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be "
                                                        "multiplied"))


def test_bench_rejects_bad_flags():
    with pytest.raises(ConfigError, match="--impl"):
        bench_led.parse_args(["--impl", "hf,fast", "--device", "cpu"])
    with pytest.raises(ConfigError, match="--lengths"):
        bench_led.parse_args(["--lengths", "4096,abc", "--device", "cpu"])
    with pytest.raises(ConfigError, match="--lengths.*16384 positions"):
        bench_led.parse_args(["--lengths", "32768", "--device", "cpu"])


@pytest.mark.slow
def test_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "seq2seq_es.bench.gpu_led", str(tmp_path), "--tiny",
         "--lengths", "256", "--steps", "1", "--warmup", "0", "--budget-s", "1500"],
        capture_output=True, text=True, timeout=1600, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_led.json").read_text())
    assert report["errors"] == {}
    assert set(report["checks"]) == {"long_check", "batch_check"}
    assert all(check["ok"] for check in report["checks"].values())
    assert report["checks"]["long_check"]["src_lengths"] == [500]
    assert set(report["checks"]["long_check"]["tensors"]) == {"encoder_output", "logits", "loss"}
    assert report["sections"] == {name: "ok" for name in
                                  ("environment", "long_check", "bench_hf", "bench_flex", "batch_check")}
    assert [(r["impl"], r["checkpointing"], r["status"]) for r in report["bench_rows"]] == [
        ("hf", False, "ok"), ("flex", False, "skipped"), ("hf", True, "ok"), ("flex", True, "skipped"),
        ("flex", "encoder", "skipped")]  # flex also with the encoder's layers alone checkpointed
    markdown = (tmp_path / "gpu_led.md").read_text()
    assert "| encoder_output |" in markdown and "| hf | 256 x 16 x 1 |" in markdown

