"""The training-memory estimator against BENCHMARKS.md's measured peaks, and every paper default
(and every grid point the planner makes of it) fitting the paper's 24 GiB GPU."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from seq2seq_es.config import compose
from seq2seq_es.models import memory
from seq2seq_es.slurm import paper_grid
from seq2seq_es.slurm.sweep import plan_sweep

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"

# The benches' T5 is built from T5Config(tie_word_embeddings=False), which transformers 5 ties
# anyway (bench/shapes.py, kernels/t5_attention.py): one 32128 x 768 matrix fewer than T5S.
T5_BENCH = dataclasses.replace(memory.SHAPES["t5s"], parameters=222_903_552)


def _table_rows(heading: str) -> list[list[str]]:
    """The cells of the first markdown table after the line starting with `heading`."""
    lines = BENCHMARKS.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows, in_table = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            in_table = True
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif in_table:
            break
    header, *body = rows
    return [dict(zip(header, row)) for row in body]


def _calibration_rows() -> list[tuple[str, memory.ModelShape, int, int, int, bool, float]]:
    """(label, shape, batch, source, target, checkpointing, measured peak GiB) from BENCHMARKS.md.

    Lengths as the benches ran them: `seq2seq-es bench led` batch 1 x 512 target tokens
    (bench/led.py); gpu_t5 batch 8 x 512 x 128 (bench/t5_check.gpu_check);
    `seq2seq-es bench` batch 32 (bench/gpu_seq2seq.py) on fixed 512 x 128 and mlsum-like
    lengths (bench/data.py: a batch of 32 reaches the 1024-token source cap and ~60 targets).
    Rows of the first seq2seq run's loop are left out: they ran DeepSpeed's bf16 optimizer
    wrapper (bf16 weights), which the package no longer uses; its Trainer rows use autocast.
    """
    rows = []
    for row in _table_rows("Training step (forward + backward + fused AdamW step), LED-base"):
        if row["impl"] == "hf":
            source, ckpt = int(row["source"]), row["checkpointing"] == "yes"
            rows.append((f"LED hf {source} ckpt={ckpt}", memory.SHAPES["ledo"], 1, source, 512,
                         ckpt, float(row["peak GiB"])))
    for row in _table_rows("T5 v1.1-base shape (12+12 layers"):
        if row["impl"].startswith("hf"):
            rows.append(("T5 hf 8x512x128", T5_BENCH, 8, 512, 128, False, float(row["peak GiB"])))
    lengths = {"mlsum-like": (1024, 60), "fixed 512×128×32": (512, 128)}
    shapes = {"BART-base": memory.SHAPES["barto"], "T5-base": T5_BENCH}
    for row in _table_rows("Same synthetic data for every row"):
        if row["impl"] == "Seq2SeqTrainer":
            source, target = lengths[row["lengths"]]
            rows.append((f"{row['model']} Trainer {row['lengths']}", shapes[row["model"]], 32,
                         source, target, False, float(row["peak GiB"])))
    for row in _table_rows("A second run on the same card"):
        if row["impl"] == "loop":
            source, target = lengths[row["lengths"]]
            rows.append((f"BART-base loop {row['lengths']}", memory.SHAPES["barto"], 32, source,
                         target, False, float(row["peak GiB"])))
    return rows


def test_the_calibration_rows_are_all_found():
    labels = [row[0] for row in _calibration_rows()]
    assert sum(label.startswith("LED hf 16384") for label in labels) == 2  # with and without
    assert sum(label.startswith("LED hf") for label in labels) == 6
    assert sum(label.startswith(("T5", "T5-base")) for label in labels) == 3
    assert sum(label.startswith("BART-base") for label in labels) == 4


@pytest.mark.parametrize("label, shape, batch, source, target, ckpt, measured",
                         _calibration_rows(), ids=[row[0] for row in _calibration_rows()])
def test_estimate_reproduces_each_measured_peak(label, shape, batch, source, target, ckpt,
                                                measured):
    estimated = memory.estimate(shape, batch, source, target, checkpointing=ckpt).total
    assert abs(estimated / measured - 1) <= memory.CALIBRATION_TOLERANCE, (label, estimated)
    # Where it errs, it errs high: no row is underestimated by more than 2%.
    assert estimated >= 0.98 * measured, (label, estimated, measured)


def test_checkpointing_and_micro_batches_shrink_the_estimate():
    led = memory.SHAPES["ledo"]
    full = memory.estimate(led, 8, 16384, 1024).total
    assert full > 100  # the old LEDO x EUR-Lex default: 8 rows of 16K tokens, no checkpointing
    assert memory.estimate(led, 8, 16384, 1024, checkpointing=True).total < full
    assert memory.estimate(led, 2, 16384, 1024, checkpointing=True).total < memory.GPU_GIB / 2
    # LED pads the source to a multiple of its 1024-token window
    assert memory.estimate(led, 1, 3000, 128).total == memory.estimate(led, 1, 3072, 128).total


def test_shapes_hold_the_parameters_of_the_real_architectures():
    """The parameter counts in memory.SHAPES are those of the models built from the published
    configs' shapes (on the meta device: no weights, no hub)."""
    torch = pytest.importorskip("torch")
    from transformers import (BartConfig, BartForConditionalGeneration, BertConfig,
                              EncoderDecoderConfig, LEDConfig, LEDForConditionalGeneration,
                              RobertaConfig, T5Config, T5ForConditionalGeneration)

    from seq2seq_es.models.sharing import SHARE_FLAG, Bert2BertModel, count_parameters

    def untied_t5_count(model) -> int:  # T5S's checkpoint holds its own LM head
        return count_parameters(model) + model.lm_head.weight.numel()

    built = {}
    bart = dict(vocab_size=50264, d_model=768, encoder_layers=6, decoder_layers=6,
                encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                decoder_ffn_dim=3072)
    with torch.device("meta"):
        built["barto"] = count_parameters(BartForConditionalGeneration(
            BartConfig(**bart, max_position_embeddings=1024)))
        built["ledo"] = count_parameters(LEDForConditionalGeneration(LEDConfig(
            **bart, attention_window=[1024] * 6, max_encoder_position_embeddings=16384,
            max_decoder_position_embeddings=1024)))
        built["t5s"] = untied_t5_count(T5ForConditionalGeneration(T5Config(
            d_model=768, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12, d_ff=2048,
            feed_forward_proj="gated-gelu", vocab_size=32128)))
        for prefix, encoder in (("beto", BertConfig(vocab_size=31002)),
                                ("roberta", RobertaConfig(vocab_size=50262, type_vocab_size=1,
                                                          max_position_embeddings=514)),
                                ("mbert", BertConfig(vocab_size=119547))):
            decoder = type(encoder)(**{**encoder.to_dict(), "is_decoder": True,
                                       "add_cross_attention": True})
            for suffix, shared in (("2" + prefix, False), ("share", True)):
                pair = EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
                setattr(pair, SHARE_FLAG, shared)
                built[prefix + suffix] = count_parameters(Bert2BertModel(pair))
    assert built == {name: shape.parameters for name, shape in memory.SHAPES.items()}


def test_every_paper_default_and_grid_point_fits_one_24_gib_gpu(tmp_path):
    """Each paper pair's default config, and each run the planner makes of the paper's grid for
    it, is estimated within the 24 GiB card less the headroom."""
    budget = memory.budget_gib()
    pairs = paper_grid.paper_pairs()
    defaults = {}
    for model, task in pairs:
        cfg = compose(task, model)
        estimated = memory.estimate_config(cfg).total
        assert estimated <= budget, (model, task, round(estimated, 2))
        defaults[(model, task)] = (estimated, cfg)
    plan = plan_sweep(tmp_path, pairs, None, [])
    for run in plan.runs:
        cfg = plan.configs[run.name]  # composed from the run's arguments, as `train` will
        default_gib, default_cfg = defaults[(run.model, run.task)]
        assert cfg.train.batch_size <= default_cfg.train.batch_size, run.name
        assert memory.estimate_config(cfg).total <= default_gib + 1e-9, run.name


def test_led_at_16k_keeps_the_papers_batch_with_checkpointing():
    cfg = compose("eurlexsum", "ledo")
    assert cfg.data.max_source_length == 16384 and cfg.model.gradient_checkpointing
    assert cfg.train.batch_size * cfg.train.grad_accum == 8  # the paper's 8 per step
    assert memory.fits(cfg)
    # the old default, 8 rows at once without checkpointing, is refused by the estimate
    cfg.train.batch_size, cfg.train.grad_accum, cfg.model.gradient_checkpointing = 8, 1, False
    assert not memory.fits(cfg)


def test_an_leds_attention_window_changes_its_estimate():
    # the window sets each encoder layer's scores and the padding; estimate_config read the
    # shape's 1024 whatever model.attention_window said
    estimates = []
    for window in ("512", "1024", "2048"):
        cfg = compose("eurlexsum", "ledo", overrides={"model.attention_window": window})
        estimates.append(memory.estimate_config(cfg).total)
    assert estimates[0] < estimates[1] < estimates[2]
    assert estimates[1] == memory.estimate_config(compose("eurlexsum", "ledo")).total
