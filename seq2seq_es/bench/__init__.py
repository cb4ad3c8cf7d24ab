"""Throughput benchmarks: `seq2seq-es bench` (the Seq2SeqTrainer route beside this package's loop).

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
"""
