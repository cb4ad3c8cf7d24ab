"""`seq2seq-es bench`: rows from real runs on tiny models, the FLOP count against the models'
own layers, the synthetic data, and the scaling table/plot. The benchmark runs in subprocesses
because the loop rows start a process group and set RANK/WORLD_SIZE in their process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seq2seq_es.bench.data import batch_tokens, draw_lengths, make_data, padded_fraction
from seq2seq_es.bench.flops import ModelShape, forward_flops, train_flops
from seq2seq_es.bench.impls import as_4d_mask, parse_impl, priming_batches, random_batch_budget
from seq2seq_es.bench.scaling import scaling_plot, scaling_points, scaling_table
from seq2seq_es.bench.seq2seq import ROW_KEYS, failed_row
from seq2seq_es.bench.shapes import SHAPES, build_model, get_shape, make_config
from seq2seq_es.cli import main as cli_main
from seq2seq_es.data.collator import Seq2SeqCollator
from engine_runs import subprocess_env
from seq2seq_es.errors import DataError, UnknownNameError

REPO = Path(__file__).resolve().parents[1]


def run_bench_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = subprocess_env(CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "seq2seq_es", "bench", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def json_rows(stdout: str) -> list[dict]:
    # --json promises nothing but rows on stdout: every line must parse.
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow  # the bench command in a subprocess: about 15 s
@pytest.mark.timeout(600)
def test_packed_rows_are_one_shape_with_less_padding():
    # Short examples (question plus context): packed rows (train.batching packed, the documents
    # masked apart) waste far less than random batches, at one shape, with the same budget.
    done = run_bench_cli("--device", "cpu", "--model", "barto-tiny", "--dist", "sqac",
                         "--steps", "2", "--warmup", "1", "--batch", "8", "--dropout", "0",
                         "--impls", "loop_fused,loop_pack_fused", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["impl"]: r for r in json_rows(done.stdout)}
    packed, plain = rows["loop_pack_fused"], rows["loop_fused"]
    assert packed["error"] is None and packed["real_tokens_per_s"] > 0
    rows_of, lengths = packed["packed_rows"].split(" x ")
    assert lengths == "(480 + 64)"                      # sqac: sources to 480, targets to 30
    assert int(rows_of) == round(plain["padded_tokens_per_step"] / 544)
    assert packed["padded_fraction"] < plain["padded_fraction"] / 1.5  # 17% against 31%
    assert packed["padded_fraction"] == pytest.approx(packed["plan_padded_fraction"], abs=0.05)


@pytest.mark.slow  # the bench command end to end in a subprocess: 10-25 s on 2 busy cores
@pytest.mark.timeout(600)
def test_bench_rows_on_mlsum_like_lengths():
    impls = ["hf_trainer", "loop", "loop_budget", "loop_budget_lean", "loop_bucket"]
    done = run_bench_cli("--device", "cpu", "--model", "barto-tiny", "--dist", "mlsum",
                         "--steps", "2", "--warmup", "1", "--batch", "4", "--dropout", "0",
                         "--impls", ",".join(impls), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json_rows(done.stdout)
    assert [r["impl"] for r in rows] == impls
    for row in rows:
        assert set(ROW_KEYS) <= set(row), row
        assert row["error"] is None
        assert row["real_tokens_per_s"] > 0
        assert 0.0 <= row["padded_fraction"] < 1.0
        assert row["step_s"] > 0 and row["tflops"] > 0 and row["mfu"] > 0
        assert row["peak_mem_gib"] is None or row["peak_mem_gib"] > 0
        assert (row["model"], row["dist"], row["device"]) == ("barto-tiny", "mlsum", "cpu")
        # Real tokens can never exceed the padded tokens computed.
        assert row["real_tokens_per_step"] <= row["padded_tokens_per_step"]
    by_impl = {r["impl"]: r for r in rows}
    # Random-order batches of mlsum-like articles pad; length-sorted budget batches hardly do.
    assert by_impl["loop_budget"]["padded_fraction"] < by_impl["loop"]["padded_fraction"]
    assert by_impl["loop_budget_lean"]["padded_fraction"] < by_impl["hf_trainer"]["padded_fraction"]
    # The budget is the fixed-size batches' average padded tokens, and its batches stay within it.
    budget = by_impl["loop_budget"]["max_tokens"]
    assert budget > 0 and by_impl["loop_budget"]["padded_tokens_per_step"] <= budget
    # Bucketed batches: the same budget in few shapes, still far less padding than random order.
    bucket = by_impl["loop_bucket"]
    assert bucket["max_tokens"] == budget and bucket["padded_tokens_per_step"] <= budget
    assert 1 <= bucket["bucket_shapes"] <= 16
    assert bucket["padded_fraction"] < by_impl["loop"]["padded_fraction"]
    assert by_impl["hf_trainer"]["speedup_vs_hf"] == pytest.approx(1.0)
    assert by_impl["hf_trainer"]["hf_model_wrapper"] == "BartForConditionalGeneration"


@pytest.mark.slow  # the same, 7-12 s
@pytest.mark.timeout(600)
def test_bench_t5_rows_and_a_failing_row():
    # flex T5 attention has no attention dropout: with the model's 0.1 that row fails on its own
    # while the sdpa row beside it runs; the table still comes out, the exit code says 1.
    done = run_bench_cli("--device", "cpu", "--model", "t5s-tiny", "--dist", "miam",
                         "--steps", "1", "--warmup", "1", "--batch", "4",
                         "--impls", "loop_fused,loop_flex")
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    fused = next(line for line in lines if "| loop_fused |" in line)
    flex = next(line for line in lines if "| loop_flex |" in line)
    assert "T5 sdpa attention" in fused and "dropout" not in fused
    assert "--dropout" in flex and "| - |" in flex


@pytest.mark.slow  # the GPU script in a subprocess: about 20 s
@pytest.mark.timeout(600)
def test_gpu_script_plumbing_on_tiny_models(tmp_path):
    # The prepared GPU script end to end on the CPU, compiled rows left out for time.
    env = subprocess_env(CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "seq2seq_es.bench.gpu_seq2seq",
                           str(tmp_path), "--tiny", "--skip-compile", "--sections", "barto"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_seq2seq.json").read_text())
    section = report["sections"]["barto"]
    assert section["status"] == "ok"
    assert [(r["dist"], r["impl"]) for r in section["rows"]] == [
        ("mlsum", "hf_trainer"), ("fixed", "hf_trainer"), ("mlsum", "loop_bucket_fused"),
        ("fixed", "loop_fused"), ("mlsum", "loop_bucket_fused_hfattn")]
    assert all(r["error"] is None and r["real_tokens_per_s"] > 0 for r in section["rows"])
    assert report["environment"]["torch"] == torch.__version__
    text = (tmp_path / "gpu_seq2seq.md").read_text()
    assert "| barto-tiny | mlsum | hf_trainer |" in text and "| barto-tiny | fixed | loop_fused |" in text
    assert "- barto-tiny mlsum:" in text and "- t5s-tiny mlsum: not measured" in text
    # uncompiled bucketed rows run every bucket shape once before timing (steady state)
    bucketed = [r for r in section["rows"] if "bucket" in r["impl"]]
    assert bucketed and all(r["priming_steps"] == r["bucket_shapes"] > 1 for r in bucketed)
    assert "## Bucket shapes run once, untimed, before the warm-up" in text


def test_bench_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli_main(["bench", "--device", "cuda", "--model", "barto-tiny"]) == 2
    assert "--device" in capsys.readouterr().err


def test_bench_names_a_bad_impl(capsys):
    assert cli_main(["bench", "--device", "cpu", "--impls", "loop,loop_turbo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --impls: unknown bench impl 'loop_turbo'")
    assert "hf_trainer" in err


@pytest.mark.parametrize("options, says", [
    # a repeated distribution was blamed on --impls ("rows listed twice")
    (["--dist", "miam,miam"], "argument --dist: miam given twice"),
    # an empty name was dropped without a word
    (["--dist", "miam,,sqac"], "argument --dist: has an empty name between commas"),
    (["--impls", "loop,"], "argument --impls: has an empty name between commas"),
])
def test_bench_names_the_list_flag_at_fault(capsys, options, says):
    assert cli_main(["bench", "--device", "cpu", *options]) == 2
    assert capsys.readouterr().err.startswith(f"error: {says}")


def test_failed_row_keeps_every_key():
    row = failed_row("loop_compile", torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"))
    assert set(ROW_KEYS) <= set(row) and row["impl"] == "loop_compile"
    assert all(row[key] is None for key in ROW_KEYS if key != "impl")
    assert row["error"].startswith("out of memory: CUDA out of memory")


# ---------------------------------------------------------------------------------------------
# Rows, shapes, FLOPs


def test_parse_impl_tokens():
    assert parse_impl("loop") == parse_impl("loop")
    plain = parse_impl("loop")
    assert (plain.route, plain.budget, plain.fused, plain.compile, plain.attention) == \
        ("loop", False, False, False, "hf")
    spec = parse_impl("loop_budget_compile_lean")
    assert spec.budget and spec.compile and spec.lean and spec.fused and not spec.static
    assert spec.attention == "sdpa"
    assert parse_impl("loop_static").compile and parse_impl("loop_static").static
    assert parse_impl("loop_flex").attention == "flex"
    assert parse_impl("loop_compile_hfattn").attention == "hf"
    assert parse_impl("hf_trainer").route == "hf_trainer"
    bucket = parse_impl("loop_bucket_engine")
    assert bucket.bucket and bucket.engine and bucket.fused and not (bucket.budget or bucket.compile)
    assert parse_impl("loop_bucket_static").static and parse_impl("loop_bucket_static").bucket
    assert not parse_impl("loop").cudnn and parse_impl("loop_budget_fused_cudnn").cudnn
    graphs = parse_impl("loop_graphs")  # the engine's compile, replayed as CUDA graphs
    assert graphs.graphs and graphs.engine and graphs.fused and not graphs.compile
    assert not parse_impl("loop_engine").graphs
    packed = parse_impl("loop_pack_engine")
    assert packed.pack and packed.engine and not (packed.budget or packed.bucket or packed.compile)
    for bad in ("loop_budget_budget", "loop_fast", "trainer", "loop_", "loop_flex_hfattn",
                "loop_budget_bucket", "loop_engine_compile", "loop_static_engine",
                "loop_graphs_compile", "loop_pack_bucket", "loop_pack_compile"):
        with pytest.raises(UnknownNameError):
            parse_impl(bad)


@pytest.mark.parametrize("name, attention", [("barto-tiny", "hf"), ("barto-tiny", "sdpa"),
                                             ("t5s-tiny", "sdpa")])
def test_4d_mask_of_compiled_rows_gives_the_same_logits(name, attention):
    # Compiled rows hand transformers a prepared [B, 1, 1, S] mask; padded and unpadded batches
    # must come out exactly as with the 2D mask.
    shape = get_shape(name)
    model = build_model(shape, torch.device("cpu"), dropout=0.0).eval()
    shape.adapter.apply_attention(model, attention)
    data = make_data("miam", 6, shape.vocab_size, shape.first_plain_id, seed=2)
    collator = Seq2SeqCollator(shape.pad_token_id, shape.decoder_start_token_id)
    padded, unpadded = priming_batches(data.examples, collator)
    assert not padded["attention_mask"].all() and unpadded["attention_mask"].all()
    for batch in (padded, unpadded):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            expected = model(**inputs).logits
            got = model(**as_4d_mask(inputs)).logits
        assert as_4d_mask(inputs)["attention_mask"].shape == (6, 1, 1, inputs["input_ids"].shape[1])
        assert torch.equal(got, expected)


def _linear_flops_by_hand(model, source_tokens: int, target_tokens: int) -> float:
    """2 x tokens x weight size over the model's own nn.Linear modules, routed by name: encoder
    linears and the decoder's cross-attention k/v read the source, the rest read the target."""
    total = 0.0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        cross_kv = any(part in name for part in ("encoder_attn.k_proj", "encoder_attn.v_proj",
                                                 "EncDecAttention.k", "EncDecAttention.v"))
        reads_source = name.startswith(("model.encoder.", "encoder.")) or cross_kv
        total += 2 * module.weight.numel() * (source_tokens if reads_source else target_tokens)
    return total


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
def test_flop_count_matches_the_models_linear_layers(name):
    shape = get_shape(name)
    model = build_model(shape, torch.device("cpu"))
    model_shape = ModelShape.from_config(make_config(shape))
    B, S, T = 3, 40, 12
    h = model_shape.attention_dim
    attention = (model_shape.encoder_layers * 4 * B * S * S * h
                 + model_shape.decoder_layers * (4 * B * T * T * h + 4 * B * T * S * h))
    expected = _linear_flops_by_hand(model, B * S, B * T) + attention
    assert forward_flops(model_shape, B, S, T) == pytest.approx(expected, rel=1e-12)
    assert train_flops(model_shape, B, S, T) == pytest.approx(3 * expected, rel=1e-12)


def test_real_shapes_are_the_papers_models():
    barto = ModelShape.from_config(make_config(SHAPES["barto"]))
    assert (barto.encoder_layers, barto.decoder_layers, barto.d_model, barto.vocab_size) == \
        (6, 6, 768, 50264)
    t5s = ModelShape.from_config(make_config(SHAPES["t5s"]))
    assert (t5s.encoder_layers, t5s.d_model, t5s.ffn_dim, t5s.ffn_matrices, t5s.vocab_size) == \
        (12, 768, 2048, 3, 32128)


# ---------------------------------------------------------------------------------------------
# Synthetic data


def test_length_distributions():
    for dist, (src_range, tgt_range) in {"mlsum": ((200, 1024), (20, 60)),
                                         "sqac": ((100, 480), (2, 30)),
                                         "miam": ((10, 120), (5, 40))}.items():
        src, tgt = draw_lengths(dist, 4000, seed=3)
        assert src.min() >= src_range[0] and src.max() <= src_range[1]
        assert tgt.min() >= tgt_range[0] and tgt.max() <= tgt_range[1]
        again = draw_lengths(dist, 4000, seed=3)
        assert np.array_equal(src, again[0]) and np.array_equal(tgt, again[1])
    src, _ = draw_lengths("mlsum", 4000, seed=3)
    # N(900, 150) clipped at 1024: about a fifth of the articles are cut there.
    assert 0.15 < (src == 1024).mean() < 0.26
    assert abs(float(np.median(src)) - 900) < 15
    fixed_src, fixed_tgt = draw_lengths("fixed", 10, seed=0)
    assert set(fixed_src) == {512} and set(fixed_tgt) == {128}
    with pytest.raises(UnknownNameError):
        draw_lengths("xsum", 10, seed=0)


def test_synthetic_examples_and_batch_token_counts():
    data = make_data("miam", 20, vocab_size=100, first_plain_id=4, seed=1)
    for k, example in enumerate(data.examples):
        assert len(example["input_ids"]) == data.source_lengths[k]
        assert len(example["labels"]) == data.target_lengths[k]
        assert min(example["input_ids"] + example["labels"]) >= 4
        assert max(example["input_ids"] + example["labels"]) < 100
    picked = [data[i] for i in (0, 1, 2)]
    batch = Seq2SeqCollator(pad_token_id=1, decoder_start_token_id=2)(picked)
    counted = batch_tokens(batch)
    real = sum(len(f["input_ids"]) + len(f["labels"]) for f in picked)
    longest = (max(len(f["input_ids"]) for f in picked), max(len(f["labels"]) for f in picked))
    assert counted.real_tokens == real
    assert (counted.batch, counted.source_len, counted.target_len) == (3, *longest)
    assert padded_fraction([counted]) == pytest.approx(1 - real / (3 * sum(longest)))
    clipped = make_data("mlsum", 50, vocab_size=100, first_plain_id=4, seed=1, max_source=300)
    assert clipped.source_lengths.max() == 300


def test_budget_is_the_random_batches_average():
    from seq2seq_es.data.sampler import StepPlan

    src, tgt = draw_lengths("mlsum", 200, seed=5)
    plan = StepPlan(200, 8, 1, 1, 7)
    padded = [len(b) * (src[b].max() + tgt[b].max())
              for step in range(plan.steps_per_epoch) for b in plan.micro_batches(0, step, 0)]
    assert random_batch_budget(src, tgt, 8, seed=7) == round(float(np.mean(padded)))


# ---------------------------------------------------------------------------------------------
# Scaling


SCALING_ROWS = [
    {"nodes": 1, "zero_stage": 2, "real_tokens_per_s": 1000.0},
    {"nodes": 2, "zero_stage": 2, "real_tokens_per_s": 1800.0},
    {"nodes": 4, "zero_stage": 2, "real_tokens_per_s": 3200.0},
    {"nodes": 1, "zero_stage": 3, "real_tokens_per_s": 800.0, "job": "a"},
    {"nodes": 1, "zero_stage": 3, "real_tokens_per_s": 900.0, "job": "rerun"},
    {"nodes": 2, "zero_stage": 3, "real_tokens_per_s": 1350.0},
    {"nodes": 4, "zero_stage": 3, "real_tokens_per_s": None},
    {"nodes": 2, "zero_stage": 1, "real_tokens_per_s": 500.0},
]


def test_scaling_efficiency_table():
    points = {(p["zero_stage"], p["nodes"]): p for p in scaling_points(SCALING_ROWS)}
    assert points[(2, 2)]["efficiency"] == pytest.approx(0.9)
    assert points[(2, 4)]["efficiency"] == pytest.approx(0.8)
    assert points[(2, 4)]["speedup"] == pytest.approx(3.2)
    # The faster of two one-node runs is the reference.
    assert points[(3, 2)]["efficiency"] == pytest.approx(1350 / (2 * 900))
    assert points[(3, 4)]["efficiency"] is None          # failed job
    assert points[(1, 2)]["efficiency"] is None          # no one-node reference
    table = scaling_table(SCALING_ROWS).splitlines()
    assert table[0].split("|")[5].strip() == "efficiency"
    assert "| 2 | 4 | 3,200 | 3.20 | 80.0% |" in table
    assert "| 3 | 2 | 1,350 | 1.50 | 75.0% |" in table
    assert "| 3 | 4 | - | - | - |" in table
    with pytest.raises(DataError, match="zero_stage"):
        scaling_table([{"nodes": 1, "real_tokens_per_s": 5.0}])


def test_a_job_that_has_not_completed_is_neither_scored_nor_a_reference():
    # A cancelled one-node job was the reference of the two-node one's efficiency (12.8%), and
    # a running job's partial rate was scored, with no mark in the scaling table.
    rows = [{"nodes": 1, "zero_stage": 0, "real_tokens_per_s": 1000.0, "finished": False},
            {"nodes": 2, "zero_stage": 0, "real_tokens_per_s": 1800.0, "finished": True},
            {"nodes": 1, "zero_stage": 2, "real_tokens_per_s": 1000.0, "finished": True},
            {"nodes": 2, "zero_stage": 2, "real_tokens_per_s": 1500.0, "finished": False},
            {"nodes": 2, "zero_stage": 2, "real_tokens_per_s": 1200.0, "finished": True}]
    points = {(p["zero_stage"], p["nodes"]): p for p in scaling_points(rows)}
    assert points[(0, 2)]["efficiency"] is None and points[(0, 2)]["finished"]
    # the completed reading wins over a faster partial one, and is scored
    assert points[(2, 2)]["real_tokens_per_s"] == 1200.0
    assert points[(2, 2)]["efficiency"] == pytest.approx(0.6)
    table = scaling_table(rows).splitlines()
    assert "| 0 | 1 | 1,000* | - | - |" in table and "| 0 | 2 | 1,800 | - | - |" in table
    assert table[-1].startswith("* its job has not completed")
    assert "not completed" not in scaling_table(SCALING_ROWS)  # rows without the key: finished


def test_scaling_plot_writes_a_png(tmp_path):
    path = scaling_plot(SCALING_ROWS, tmp_path / "plots" / "scaling.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def _led_row(impl, checkpointing, step_s, peak_gib, src_len=16384):
    return {"impl": impl, "checkpointing": checkpointing, "step_s": step_s, "peak_gib": peak_gib,
            "src_len": src_len, "status": "ok"}


def test_gpu_summary_says_which_targets_are_met_and_which_were_not_measured(tmp_path):
    from seq2seq_es.bench.gpu_summary import summary

    # A run cut short: no LED, no ablation, only BART's section of the seq2seq bench.
    (tmp_path / "seq2seq").mkdir()
    rows = [{"model": "barto", "dist": dist, "impl": impl, "real_tokens_per_s": tokens}
            for dist, impl, tokens in (("mlsum", "hf_trainer", 100.0), ("mlsum", "loop", 150.0),
                                       ("mlsum", "loop_bucket_static", 260.0),
                                       ("fixed", "hf_trainer", 100.0), ("fixed", "loop_compile", 120.0))]
    report = {"tiny": False, "sections": {"barto": {"status": "ok", "rows": rows}}}
    (tmp_path / "seq2seq" / "gpu_seq2seq.json").write_text(json.dumps(report))
    text = summary(tmp_path)
    assert "- barto mlsum: 2.60x (loop_bucket_static) vs target 2.5x: PASS" in text
    assert "- barto fixed: 1.20x (loop_compile) vs target 1.8x: FAIL (1.50x short of it)" in text
    assert "- t5s mlsum: not measured (target 3.0x)" in text
    assert "- section t5s: did not run" in text
    assert "LEDO 16K: not measured" in text and "flex_ablation.txt missing" in text

    # LED rows: 4x with checkpointing at 0.09 s meets both; 2.74x without does not.
    (tmp_path / "led").mkdir()
    led = {"bench_rows": [_led_row("hf", True, 0.36, 6.9), _led_row("flex", True, 0.09, 5.9),
                          _led_row("hf", False, 0.2672, 19.6), _led_row("flex", False, 0.0975, 7.5),
                          _led_row("hf", True, 0.01, 1.0, src_len=4096)],
           "checks": {"long_check": {"ok": True}}, "sections": {"long_check": "ok", "bench_hf": "ok"}}
    (tmp_path / "led" / "gpu_led.json").write_text(json.dumps(led))
    text = summary(tmp_path)
    assert "Targets at 16384 source tokens:" in text
    assert ("- checkpointing on: flex 4.00x hf (target 4.0x: met), peak 5.90 vs 6.90 GiB (ok), "
            "flex step 0.0900 s (target <= 0.095 s: met)") in text
    assert "- checkpointing off: flex 2.74x hf (target 3.5x: NOT met)" in text
    assert "- accuracy long_check: PASS" in text
    assert "encoder only" not in text  # a run from before that mode existed

    # flex with the encoder's layers alone checkpointed, against the HF route's full checkpointing
    led["bench_rows"].append(_led_row("flex", "encoder", 0.08, 6.5))
    (tmp_path / "led" / "gpu_led.json").write_text(json.dumps(led))
    text = summary(tmp_path)
    assert ("- checkpointing encoder only: flex 4.50x hf (target 4.0x: met), peak 6.50 vs 6.90 GiB "
            "(ok), flex step 0.0800 s (target <= 0.095 s: met)") in text

    # The 0.095 s is an H200's figure: on an H100 (the lent machine's default) the step is shown,
    # not judged; the ratio to the HF route, timed on the same card, still is.
    led["bench_rows"][1] = _led_row("flex", True, 0.1, 5.9)
    for card, judged in (("NVIDIA H100 80GB HBM3", "(the <= 0.095 s target is an H200's; this "
                                                   "card: NVIDIA H100 80GB HBM3)"),
                         ("NVIDIA H200", "(target <= 0.095 s: NOT met)")):
        led["environment"] = {"device": "cuda", "card": card}
        (tmp_path / "led" / "gpu_led.json").write_text(json.dumps(led))
        assert ("- checkpointing on: flex 3.60x hf (target 4.0x: NOT met), peak 5.90 vs 6.90 GiB "
                f"(ok), flex step 0.1000 s {judged}") in summary(tmp_path)


def test_gpu_summary_says_whether_one_call_measured_every_target_in_time(tmp_path):
    from seq2seq_es.bench.gpu_summary import summary

    (tmp_path / "seq2seq").mkdir()
    rows = [{"model": m, "dist": d, "impl": i, "real_tokens_per_s": 100.0}
            for m in ("barto", "t5s") for d in ("mlsum", "fixed") for i in ("hf_trainer", "loop")]
    (tmp_path / "seq2seq" / "gpu_seq2seq.json").write_text(json.dumps(
        {"tiny": False, "sections": {"barto": {"status": "ok", "rows": rows}}}))
    (tmp_path / "led").mkdir()
    led = {"bench_rows": [_led_row("hf", True, 0.36, 6.9), _led_row("flex", "encoder", 0.08, 6.0),
                          _led_row("hf", False, 0.25, 19.6), _led_row("flex", False, 0.07, 7.5)]}
    (tmp_path / "led" / "gpu_led.json").write_text(json.dumps(led))
    (tmp_path / "flex_ablation.txt").write_text(
        "A plain band, contiguous             forward    0.277 ms\n"
        "E ours, row-span mask_mod            forward    0.441 ms\n"
        "A-dyn plain band, dynamic shapes     forward    0.400 ms\n"
        "E-dyn row-span mask_mod, dynamic     forward    0.619 ms\n")
    text = summary(tmp_path, call_seconds=455)
    # every target row measured (the all-layer checkpointing row is a comparison once the
    # encoder-only one is there), in 455 s
    assert "- the call took 455 s (target < 480 s: met)\n- target rows not measured: 0\n" in text
    (tmp_path / "flex_ablation.txt").write_text(
        "A plain band, contiguous             forward    0.277 ms\n")
    text = summary(tmp_path, call_seconds=519)
    assert "- the call took 519 s (target < 480 s: NOT met)" in text
    assert ("- target rows not measured: 2\n"
            "  - LED flex forward, static shapes: not measured (E and A rows)\n"
            "  - LED flex forward, dynamic shapes: not measured (E-dyn and A-dyn rows)") in text


def test_gpu_summary_reads_item_4_from_the_flex_ablation(tmp_path):
    from seq2seq_es.bench.gpu_summary import summary

    # the ablation's own lines (gpu_flex_ablation.py), as the H200 run of 2026-12-04 printed them
    (tmp_path / "flex_ablation.txt").write_text(
        "device cuda (NVIDIA H200), torch 2.11.0+cu130, L=16384, heads 12x64, window +-512\n"
        "A plain band, contiguous             forward    0.277 ms   forward+backward    1.630 ms\n"
        "E ours, row-span mask_mod            forward    0.441 ms   forward+backward    2.075 ms\n"
        "A-dyn plain band, dynamic shapes     forward    0.200 ms   forward+backward    1.000 ms\n"
        "E-dyn row-span mask_mod, dynamic     error RuntimeError: out of resource\n")
    text = summary(tmp_path)
    assert ("- LED flex forward, static shapes: 0.441 vs 0.277 ms, 1.59x the plain band "
            "(target <= 2.0x: met)") in text
    assert "- LED flex forward, dynamic shapes: not measured (E-dyn and A-dyn rows)" in text
    (tmp_path / "flex_ablation.txt").write_text(
        "A plain band, contiguous             forward    0.283 ms\n"
        "E ours, row-span mask_mod            forward    0.680 ms\n")
    assert "0.680 vs 0.283 ms, 2.40x the plain band (target <= 2.0x: NOT met)" in summary(tmp_path)


@pytest.mark.parametrize("impl, compiled", [("loop_budget", False), ("loop_budget_engine", True)])
def test_loop_rows_pad_batches_as_training_pads(monkeypatch, impl, compiled):
    """The bench's loop rows time the step training runs, so their batches are padded as
    get_collator pads them: multiples of 8 on a GPU (64 for a compiled model), and the
    token-budget plan packs by those padded lengths. The rows once padded to any length."""
    from seq2seq_es.bench.impls import BenchCase, _step_plan, loop_collator, loop_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only get_collator's rule reads it
    shape = get_shape("barto-tiny")
    data = make_data("mlsum", 64, shape.vocab_size, shape.first_plain_id, seed=0, max_source=1024)
    case = BenchCase(shape=shape, dist="mlsum", device=torch.device("cpu"), data=data, batch_size=8,
                     max_tokens=8000, warmup=1, steps=2)
    cfg = loop_config(case, parse_impl(impl))
    collator = loop_collator(case, cfg)
    multiple = 64 if compiled else 8
    assert collator.pad_to_multiple_of == multiple
    from seq2seq_es.engine.builders import compile_shapes
    assert collator.mark_dynamic == (compiled and compile_shapes(cfg) == "dynamic")
    plan = _step_plan(case, cfg, collator)
    steps = plan.iter_steps(0, 0, 0)
    for _ in range(4):
        micro = next(steps)[2][0]
        batch = collator([data[i] for i in micro])
        assert batch["input_ids"].shape[1] % multiple == 0
        # The plan counted the padded source length, so the padded batch keeps to the budget.
        assert len(micro) * (batch["input_ids"].shape[1] + batch["labels"].shape[1]) \
            <= cfg.train.max_tokens


def test_a_row_trains_with_its_cudnn_attention_and_puts_the_switch_back(monkeypatch):
    """model.cudnn_attention (off by default, on with the `cudnn` token) reaches SDPA through the
    process-wide switch for the row's steps only: later rows and the Trainer rows of the process
    run with torch's own choice again."""
    from seq2seq_es.bench import impls
    from seq2seq_es.bench.impls import BenchCase, run_loop

    seen = []

    def recording(case, spec):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        raise RuntimeError("stop here")

    monkeypatch.setattr(impls, "_run_loop", recording)
    shape = get_shape("barto-tiny")
    data = make_data("mlsum", 8, shape.vocab_size, shape.first_plain_id, seed=0)
    case = BenchCase(shape, "mlsum", torch.device("cpu"), data, 4, 4000, 1, 1)
    from seq2seq_es.engine.builders import set_cudnn_attention

    # torch's own setting as the Trainer rows have it (an earlier get_model of this process
    # may have turned it off)
    earlier = set_cudnn_attention(True)
    try:
        for name in ("loop_budget_fused", "loop_budget_fused_cudnn"):
            with pytest.raises(RuntimeError, match="stop here"):
                run_loop(case, parse_impl(name))
            assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        set_cudnn_attention(earlier)
    assert seen == [False, True]


def test_step_profile_sums_attention_kernels_by_kind():
    from types import SimpleNamespace

    from seq2seq_es.bench.gpu_step_profile import attention_kernel_times

    events = [SimpleNamespace(key="cudnn_generated_fort_native_sdpa_sm90_flash_fprop", self_device_time_total=300.0),
              SimpleNamespace(key="void pytorch_flash::flash_fwd_kernel<...>", self_device_time_total=200.0),
              SimpleNamespace(key="fmha_cutlassF_bf16_aligned_64x64_rf_sm80", self_device_time_total=50.0),
              SimpleNamespace(key="ampere_bf16_s16816gemm", self_device_time_total=999.0)]
    assert attention_kernel_times(events) == {"cudnn": 300.0, "flash": 200.0, "efficient": 50.0}


def test_step_profile_writes_a_row_s_operator_tables(tmp_path, capsys):
    from seq2seq_es.bench.gpu_step_profile import main

    assert main([str(tmp_path), "--dist", "fixed", "--batch", "2", "--warmup", "1", "--steps", "1",
                 "--impls", "loop_fused"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("barto-tiny fixed loop_fused: median step ") and "1 timed steps" in line
    text = (tmp_path / "barto-tiny_fixed_loop_fused.txt").read_text()
    assert "## by self_cpu_time_total" in text and "aten::mm" in text
