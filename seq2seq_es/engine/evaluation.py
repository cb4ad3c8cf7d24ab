"""Validation loss and generation with the task's metrics, sharded over ranks.

Rank r takes examples r, r + W, r + 2W, ... and every rank pads its shard to the same length
(padding slots carry index -1 and are dropped at the gather), so no example is dropped or
counted twice when the split does not divide by the world size, and every rank makes the same
number of forward/generate calls, which ZeRO-3's collective parameter gathering requires
(`synced_gpus`). RNG state is saved and restored around evaluation so that when evaluation runs
does not change the training randomness (exact resume depends on it).

`evaluate` (loss + generation + metrics, for training and `seq2seq-es evaluate`) and
`generate_texts` (generation only, for `seq2seq-es predict`) share the sharding, the generate
call and the ordered gather below.
"""

from __future__ import annotations

import contextlib
import json
import sys
import unicodedata
from pathlib import Path

import torch

from ..data.sampler import shard_for_eval
from . import distributed as D
from .loss import token_ce_sum

GENERATE_INPUTS = ("input_ids", "attention_mask", "global_attention_mask")


def shard_batches(order: list[int], env: D.DistEnv, batch_size: int) -> list[list[int]]:
    """This rank's batches of example indices taken from `order`, padded with -1 so that every
    rank has the same number of batches of the same sizes."""
    positions = shard_for_eval(len(order), env.rank, env.world_size)
    indices = [order[p] if p >= 0 else -1 for p in positions]
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def batch_features(features, idx: list[int]) -> list[dict]:
    """The features of a batch; padding slots (-1) repeat a real example of the batch (or example
    0) so that the batch shape stays valid. Their outputs are dropped."""
    filler = next((i for i in idx if i >= 0), 0)
    return [features[i if i >= 0 else filler] for i in idx]


def clean_prediction(task, text: str) -> str:
    """Undo tokenizer artefacts that the task's metrics would count as errors; composed
    Unicode (NFC), as the references are loaded."""
    text = unicodedata.normalize("NFC", text.strip())
    if task is not None and task.kind == "split_rephrase":
        from ..tasks import normalize_split_markers
        text = normalize_split_markers(text)
    return text


def validation_metric_names(task) -> list[str]:
    """What a validation of `task` reports (after 'eval/'): the loss and every key its metrics
    return, found by scoring one dummy example with them (so no list is kept by hand)."""
    from ..metrics import compute_metrics

    text = "uno dos tres"
    return ["loss", *compute_metrics(task.metrics, [text], [[text]], sources=[text],
                                     options=task.metric_options)]


def decode_is_lossy(tokenizer) -> bool:
    """WordPiece (BETO, mBERT) decodes with a space around every punctuation mark and between the
    pieces of a number ("¿ Qué", "( 5 años )", "3, 5"): no output can match a reference's
    spacing. Byte-level BPE (BARTO, RoBERTa) and T5's unigram model give the text back."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordPiece"


def scoring_references(references: list, tokenizer, task) -> list:
    """The references predictions are scored against: as written, except where the tokenizer's
    decoding is lossy; there each reference takes the path a prediction takes (encode, decode
    without special tokens, `clean_prediction`), as the paper's scripts did by decoding the
    labels, so a model is not charged for spacing its tokenizer cannot produce."""
    if not decode_is_lossy(tokenizer):
        return references

    def round_trip(text: str) -> str:
        ids = tokenizer(text_target=text).input_ids
        return clean_prediction(task, tokenizer.decode(ids, skip_special_tokens=True))
    return [round_trip(refs) if isinstance(refs, str) else [round_trip(r) for r in refs]
            for refs in references]


def generate_batch(model, batch: dict, idx: list[int], *, generation_config, tokenizer, task,
                   synced_gpus: bool, autocast) -> list[tuple[int, str]]:
    """(index, cleaned prediction) for the real examples of one collated batch on the device."""
    inputs = {k: batch[k] for k in GENERATE_INPUTS if k in batch}
    with autocast:
        out = model.generate(**inputs, generation_config=generation_config,
                             synced_gpus=synced_gpus)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return [(i, clean_prediction(task, t)) for i, t in zip(idx, texts) if i >= 0]


def gather_in_order(pairs: list[tuple[int, str]], total: int, env: D.DistEnv) -> list[str] | None:
    """Collect every rank's (index, text) pairs; rank 0 gets the texts in index order (others
    None). Fails loudly if an example is missing or was predicted twice."""
    gathered = D.gather_objects(pairs, env.world_size)
    if not env.is_main:
        return None
    by_index: dict[int, str] = {}
    for part in gathered:
        for i, text in part:
            assert i not in by_index, f"example {i} was predicted twice"
            by_index[i] = text
    assert len(by_index) == total, f"{total - len(by_index)} examples were not predicted"
    return [by_index[i] for i in range(total)]


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    from .progress import is_terminal
    # In a log file (no terminal) each redraw is another carriage-return record: once a minute.
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.1 if is_terminal(sys.stderr) else 60)


@contextlib.contextmanager
def _inference_mode(model):
    """eval() mode and the RNG states of the caller kept, whatever happens inside."""
    was_training = model.training
    model.eval()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)
        model.train(was_training)


@torch.no_grad()
def generate_texts(model, *, features, collator, tokenizer, generation_config, task,
                   env: D.DistEnv, batch_size: int, zero_stage: int, bf16: bool,
                   sort_by_length: bool = True, progress: bool = False,
                   desc: str = "predict") -> list[str] | None:
    """Generate for every item of `features` (dicts with `input_ids`), sharded over ranks.

    Returns the predictions in the order of `features` on rank 0, None on the other ranks.
    With `sort_by_length` the examples are batched longest first (less padding); the result's
    order does not change. Every rank must call it (collective).
    """
    total = len(features)
    order = list(range(total))
    if sort_by_length:
        order.sort(key=lambda i: -len(features[i]["input_ids"]))
    batches = shard_batches(order, env, batch_size)
    device = env.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    synced = zero_stage == 3 and env.world_size > 1
    bar = _progress(len(batches), desc, progress and env.is_main)
    pairs: list[tuple[int, str]] = []
    with _inference_mode(model):
        for idx in batches:
            batch = {k: v.to(device) for k, v in collator(batch_features(features, idx)).items()}
            pairs += generate_batch(model, batch, idx, generation_config=generation_config,
                                    tokenizer=tokenizer, task=task, synced_gpus=synced,
                                    autocast=autocast)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return gather_in_order(pairs, total, env)


@torch.no_grad()
def evaluate(model, *, tokenized, examples, collator, tokenizer, generation_config, task,
             env: D.DistEnv, batch_size: int, zero_stage: int, bf16: bool, step: int,
             out_dir: Path | None, generate: bool = True, prefix: str = "eval",
             predictions_dir: Path | None = None, progress: bool = False) -> dict[str, float]:
    """Return {'<prefix>/loss': ..., '<prefix>/<metric>': ...} on every rank; rank 0 writes files.

    `prefix` names the split in the keys: "eval" for validation, "test" for the test split.
    Predictions and scores go to `predictions_dir` when given, else to out_dir/step_<step>
    (nowhere when both are None). Runs without gradient tracking: the loss forward keeps no
    activations for a backward.
    """
    device = env.device
    total = len(tokenized)
    batches = shard_batches(list(range(total)), env, batch_size)
    ce_sum, n_tokens, pairs = 0.0, 0.0, []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    synced = zero_stage == 3 and env.world_size > 1
    bar = _progress(len(batches), prefix, progress and env.is_main)
    with _inference_mode(model):
        for idx in batches:
            batch = {k: v.to(device) for k, v in collator(batch_features(tokenized, idx)).items()}
            labels = batch.pop("labels")
            keep = torch.tensor([i >= 0 for i in idx], device=device)
            with autocast:
                logits = model(**batch).logits
            masked = labels.masked_fill(~keep[:, None], -100)
            ce_sum += token_ce_sum(logits, masked).item()
            n_tokens += (masked != -100).sum().item()
            if generate:
                pairs += generate_batch(model, batch, idx, generation_config=generation_config,
                                        tokenizer=tokenizer, task=task, synced_gpus=synced,
                                        autocast=autocast)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        total_ce, total_tokens = D.all_reduce_sum([ce_sum, n_tokens], device)
        results = {f"{prefix}/loss": total_ce / max(total_tokens, 1.0)}
        if generate:
            ordered = gather_in_order(pairs, total, env)
            if env.is_main:
                # Imported on rank 0 only: the other ranks never score.
                from ..metrics import compute_metrics
                references = scoring_references(list(examples["references"]), tokenizer, task)
                scores = compute_metrics(task.metrics, ordered, references,
                                         sources=list(examples["source"]),
                                         options=task.metric_options)
                results.update({f"{prefix}/{k}": v for k, v in scores.items()})
                folder = predictions_dir if predictions_dir is not None else (
                    out_dir / f"step_{step:08d}" if out_dir is not None else None)
                if folder is not None:
                    _write_predictions(folder, examples, ordered, results, references)
            results = D.broadcast_object(results)
    return results


def _write_predictions(folder: Path, examples, predictions: list[str], results: dict,
                       scored: list) -> None:
    """predictions.jsonl (with `scored_references` where the scores used other texts than the
    references: see scoring_references), scores.json, and line files for `seq2seq-es score`:
    predictions.txt, references.txt (the targets), sources.txt, and scored_references.jsonl
    (every reference each example was scored against), so a rescoring compares like with like."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, prediction in enumerate(predictions):
            row = examples[i]
            record = {"example_id": row.get("example_id", i), "source": row["source"],
                      "prediction": prediction, "reference": row["target"]}
            if list(scored[i]) != list(row["references"]):
                record["scored_references"] = list(scored[i])
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    (folder / "predictions.txt").write_text("\n".join(p.replace("\n", " ") for p in predictions)
                                            + "\n", encoding="utf-8")
    (folder / "references.txt").write_text(
        "\n".join(t.replace("\n", " ") for t in examples["target"]) + "\n", encoding="utf-8")
    (folder / "sources.txt").write_text(
        "\n".join(t.replace("\n", " ") for t in examples["source"]) + "\n", encoding="utf-8")
    (folder / "scored_references.jsonl").write_text(
        "".join(json.dumps(list(references), ensure_ascii=False) + "\n" for references in scored),
        encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps(results, indent=1))
