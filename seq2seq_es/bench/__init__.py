"""Benchmarks, checks and probes (kernels/ keeps the kernels): `seq2seq-es bench` (the Seq2SeqTrainer
route beside this package's loop), `bench led`, `slurm bench`, the SLURM probe and the GPU session.

- `seq2seq`: the command; one process, the same synthetic data, one row per implementation.
- `shapes`: random-weight models of the real shapes, built from configs (no hub).
- `data`: the length distributions (fixed, mlsum-, sqac-, miam-like) and the synthetic examples.
- `flops`: the model FLOP count and the matmul ceiling MFU is measured against.
- `timing`: step clocks (CUDA events or wall clock) and peak memory.
- `impls`: the rows: `hf_trainer` and the `loop[_budget][_fused][_compile][_lean][_flex]` variants.
- `scaling`: scaling-efficiency table and plot for multi-node results.
- `led`: `seq2seq-es bench led`, LED training-step throughput per attention implementation and length.
- `led_check`: the LED attention implementations checked numerically against transformers' own.
- `t5_check`: the T5 attention implementations compared (accuracy, step time) on a T5-v1.1-base shape.
- `scaling_jobs`: `seq2seq-es slurm bench`, throughput over node counts and ZeRO stages as SLURM jobs.
- `probe`: the SLURM cluster probe (entry `seq2seq_es.slurm.probe:main`), a small gloo program
  with the engine's pre-emption contract.

The GPU session's sections, each run as `python3 -m seq2seq_es.bench.<name> OUT_DIR ...` by
benchmarks/gpu_all.sh (with --tiny or --cpu-smoke they run on the CPU, as the tests do):
- `gpu_led`: flex against transformers' LED at 16K, then the LED benchmark at 4K/8K/16K.
- `gpu_t5`: `t5_check.gpu_check` at the T5-v1.1-base shape.
- `gpu_precision`: fp16 loss scaling under ZeRO 0/2/3, bf16 with fp32 gradient accumulation.
- `gpu_seq2seq`: `seq2seq-es bench` on the BARTO and T5S shapes, Trainer route vs loop.
One-off probes, run by hand: `gpu_led_profile` (where a 16K LED step spends its GPU time),
`gpu_flex_options` (FlexAttention kernel options on a plain band), `gpu_flex_ablation` (what makes
the LED flex forward slower than a plain band).
"""
