"""Validation loss and generation with the task's metrics, sharded over ranks.

Rank r takes examples r, r + W, r + 2W, ... and every rank pads its shard to the same length
(padding slots carry index -1 and are dropped at the gather), so no example is dropped or
counted twice when the split does not divide by the world size, and every rank makes the same
number of forward/generate calls, which ZeRO-3's collective parameter gathering requires
(`synced_gpus`). RNG state is saved and restored around evaluation so that when evaluation runs
does not change the training randomness (exact resume depends on it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.sampler import shard_for_eval
from . import distributed as D
from .loss import token_ce_sum


def _batches(indices: list[int], batch_size: int):
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


def clean_prediction(task, text: str) -> str:
    """Undo tokenizer artefacts that the task's metrics would count as errors."""
    text = text.strip()
    if task.kind == "split_rephrase":
        from ..tasks import normalize_split_markers
        text = normalize_split_markers(text)
    return text


@torch.no_grad()
def evaluate(model, *, tokenized, examples, collator, tokenizer, generation_config, task,
             env: D.DistEnv, batch_size: int, zero_stage: int, bf16: bool, step: int,
             out_dir: Path | None, generate: bool = True, prefix: str = "eval") -> dict[str, float]:
    """Return {'<prefix>/loss': ..., '<prefix>/<metric>': ...} on every rank; rank 0 writes files.

    `prefix` names the split in the keys: "eval" for validation, "test" for the test split.
    Runs without gradient tracking: the loss forward keeps no activations for a backward.
    """
    device = env.device
    was_training = model.training
    model.eval()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    shard = shard_for_eval(len(tokenized), env.rank, env.world_size)
    ce_sum, n_tokens, predictions = 0.0, 0.0, []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for idx in _batches(shard, batch_size):
        # Padding slots repeat example 0 so that the batch shape stays valid; outputs dropped.
        features = [tokenized[i if i >= 0 else 0] for i in idx]
        batch = {k: v.to(device) for k, v in collator(features).items()}
        labels = batch.pop("labels")
        keep = torch.tensor([i >= 0 for i in idx], device=device)
        with autocast:
            logits = model(**batch).logits
        masked = labels.masked_fill(~keep[:, None], -100)
        ce_sum += token_ce_sum(logits, masked).item()
        n_tokens += (masked != -100).sum().item()
        if generate:
            gen_inputs = {k: batch[k] for k in ("input_ids", "attention_mask",
                                                "global_attention_mask") if k in batch}
            with autocast:
                out = model.generate(**gen_inputs, generation_config=generation_config,
                                     synced_gpus=zero_stage == 3 and env.world_size > 1)
            texts = tokenizer.batch_decode(out, skip_special_tokens=True)
            predictions += [(i, clean_prediction(task, t)) for i, t in zip(idx, texts) if i >= 0]
    total_ce, total_tokens = D.all_reduce_sum([ce_sum, n_tokens], device)
    results = {f"{prefix}/loss": total_ce / max(total_tokens, 1.0)}
    if generate:
        gathered = D.gather_objects(predictions, env.world_size)
        if env.is_main:
            # Imported on rank 0 only, when first needed: `evaluate` takes seconds to import.
            from ..metrics import compute_metrics
            by_index = dict(pair for part in gathered for pair in part)
            assert len(by_index) == len(tokenized), "every example is predicted exactly once"
            ordered = [by_index[i] for i in range(len(tokenized))]
            scores = compute_metrics(task.metrics, ordered, list(examples["references"]),
                                     sources=list(examples["source"]))
            results.update({f"{prefix}/{k}": v for k, v in scores.items()})
            if out_dir is not None:
                _write_predictions(out_dir / f"step_{step:08d}", examples, ordered, results)
        results = D.broadcast_object(results)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng)
    model.train(was_training)
    return results


def _write_predictions(folder: Path, examples, predictions: list[str], results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, prediction in enumerate(predictions):
            row = examples[i]
            f.write(json.dumps({"example_id": row.get("example_id", i), "source": row["source"],
                                "prediction": prediction, "reference": row["target"]},
                               ensure_ascii=False) + "\n")
    (folder / "predictions.txt").write_text("\n".join(p.replace("\n", " ") for p in predictions)
                                            + "\n", encoding="utf-8")
    (folder / "references.txt").write_text(
        "\n".join(t.replace("\n", " ") for t in examples["target"]) + "\n", encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps(results, indent=1))
