"""Validation loss and generation with the task's metrics, sharded over ranks.

The examples are cut into batches and rank r takes batches r, r + W, r + 2W, ... (a batch holds
the same examples on any number of ranks, so sampled or bf16 predictions do not depend on it);
every rank pads its list to the same length with batches of index -1, dropped at the gather, so
no example is dropped or counted twice when the batches do not divide by the world size, and
every rank makes the same number of forward/generate calls, which ZeRO-3's collective parameter
gathering requires (`synced_gpus`). RNG state is saved and restored around evaluation so that
when evaluation runs does not change the training randomness (exact resume depends on it).

`evaluate` (loss + generation + metrics, for training and `seq2seq-es evaluate`) and
`generate_texts` (generation only, for `seq2seq-es predict`) share the sharding, the generate
call and the ordered gather below.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

from ..data.rows import rows_of, source_lengths
from ..data.sampler import eval_batches
from ..tasks.formatting import clean_prediction
from . import distributed as D
from . import storage
from .loss import token_ce_sum

GENERATE_INPUTS = ("input_ids", "attention_mask", "global_attention_mask")


def shard_batches(order: list[int], env: D.DistEnv, batch_size: int) -> list[list[int]]:
    """This rank's batches of example indices taken from `order` (sampler.eval_batches)."""
    return eval_batches(order, batch_size, env.rank, env.world_size)


def batch_features(features, idx: list[int]) -> list[dict]:
    """The features of a batch; padding slots (-1) repeat a real example of the batch (or example
    0) so that the batch shape stays valid. Their outputs are dropped."""
    filler = next((i for i in idx if i >= 0), 0)
    return rows_of(features, [i if i >= 0 else filler for i in idx])


def validation_metric_names(task) -> list[str]:
    """What a validation of `task` reports (after 'eval/'): the loss and every key its metrics
    return, found by scoring one dummy example with them (so no list is kept by hand)."""
    from ..metrics import compute_metrics

    text = "uno dos tres"
    return ["loss", *compute_metrics(task.metrics, [text], [[text]], sources=[text],
                                     options=task.metric_options)]


def round_trip(texts: list[str], tokenizer, task) -> list[str]:
    """Each text as the model would emit it: encoded, decoded without special tokens and
    cleaned like a prediction (`clean_prediction`). No tokenizer here gives every text back:
    WordPiece (BETO, mBERT) puts a space around every punctuation mark and between the pieces
    of a number ("¿ Qué", "( 5 años )", "3, 5"); T5S's SentencePiece normaliser (NFKC) writes
    "nº 1º" as "no 1o", "…" as "..." and drops newlines; byte-level BPE (BARTO, RoBERTa) gives
    the text back, up to the spaces around it."""
    if not texts:
        return []
    ids = tokenizer(text_target=list(texts)).input_ids
    return [clean_prediction(task, text)
            for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def scoring_references(references: list, tokenizer, task) -> list:
    """The references predictions are scored against: each takes the path a prediction takes
    (`round_trip`), as the paper's scripts did by decoding the labels for every model, so a
    model is not charged for what its tokenizer cannot produce (spacing, NFKC forms)."""
    flat = [text for refs in references for text in ([refs] if isinstance(refs, str) else refs)]
    texts = iter(round_trip(flat, tokenizer, task))
    return [next(texts) if isinstance(refs, str) else [next(texts) for _ in refs]
            for refs in references]


def scoring_sources(sources: list[str], tokenizer, task) -> list[str] | None:
    """The sources SARI compares with (the only metric that reads them): round-tripped like the
    references, as the paper's scripts decoded the inputs (under the paper's 13a tokenisation
    "¿ Sabías" against "¿Sabías" would count as an edit). None when no metric reads them."""
    from ..metrics.scoring import METRICS_NEEDING_SOURCES

    if not METRICS_NEEDING_SOURCES & set(task.metrics):
        return None
    return round_trip(sources, tokenizer, task)


def encode_sources(model, batch: dict):
    """The encoder's outputs for a collated batch (what `generate` and a forward given
    `encoder_outputs` skip computing)."""
    return model.get_encoder()(**{k: batch[k] for k in GENERATE_INPUTS if k in batch},
                               return_dict=True)


def generate_batch(model, batch: dict, idx: list[int], *, generation_config, tokenizer, task,
                   synced_gpus: bool, autocast, sample_seed: int = 0,
                   encoder_outputs=None) -> list[tuple[int, str]]:
    """(index, cleaned prediction) for the real examples of one collated batch on the device;
    `encoder_outputs` of the batch where they were computed already (generate expands them for
    its beams in place).

    Sampling draws from a generator seeded by `sample_seed` and the batch's first example, in a
    fork of the global RNG: the same predictions on every run and on a resumed one, and the
    training's dropout and data order untouched by how many tokens a validation sampled."""
    inputs = {k: batch[k] for k in GENERATE_INPUTS if k in batch}
    # None: the model's own generation config (a caller's choice; ours always pass one)
    sampled = generation_config is not None and bool(generation_config.do_sample)
    sampling = contextlib.nullcontext()
    if sampled:
        device = batch["input_ids"].device
        sampling = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                         device_type=device.type)
    with sampling, autocast:
        if sampled:
            torch.manual_seed(sample_seed * 1_000_003 + max(idx[0], 0))
        encoded = {} if encoder_outputs is None else {"encoder_outputs": encoder_outputs}
        out = model.generate(**inputs, **encoded, generation_config=generation_config,
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
                   desc: str = "predict", sample_seed: int = 0) -> list[str] | None:
    """Generate for every item of `features` (dicts with `input_ids`), sharded over ranks.

    Returns the predictions in the order of `features` on rank 0, None on the other ranks.
    With `sort_by_length` the examples are batched longest first (less padding); the result's
    order does not change. Every rank must call it (collective).
    """
    total = len(features)
    order = list(range(total))
    if sort_by_length:
        lengths = source_lengths(features)
        order.sort(key=lambda i: -lengths[i])
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
                                    autocast=autocast, sample_seed=sample_seed)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return gather_in_order(pairs, total, env)


@torch.no_grad()
def evaluate(model, *, tokenized, examples, collator, tokenizer, generation_config, task,
             env: D.DistEnv, batch_size: int, zero_stage: int, bf16: bool, step: int,
             out_dir: Path | None, generate: bool = True, prefix: str = "eval",
             predictions_dir: Path | None = None, progress: bool = False,
             sample_seed: int = 0) -> dict[str, float]:
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
                # One encoder pass serves the loss and the generation, which would encode the
                # sources again: a third of a validation's time on short outputs (scale audit),
                # more on LEDO's long inputs.
                encoded = encode_sources(model, batch) if generate else None
                logits = model(**batch, use_cache=False,  # generate keeps its own cache
                               **({} if encoded is None else {"encoder_outputs": encoded})).logits
            masked = labels.masked_fill(~keep[:, None], -100)
            ce_sum += token_ce_sum(logits, masked).item()
            n_tokens += (masked != -100).sum().item()
            if generate:
                pairs += generate_batch(model, batch, idx, generation_config=generation_config,
                                        tokenizer=tokenizer, task=task, synced_gpus=synced,
                                        autocast=autocast, sample_seed=sample_seed,
                                        encoder_outputs=encoded)
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
                sources = scoring_sources(list(examples["source"]), tokenizer, task)
                scores = compute_metrics(task.metrics, ordered, references, sources=sources,
                                         options=task.metric_options)
                results.update({f"{prefix}/{k}": v for k, v in scores.items()})
                folder = predictions_dir if predictions_dir is not None else (
                    out_dir / f"step_{step:08d}" if out_dir is not None else None)
                if folder is not None:
                    with storage.writing(folder, "the predictions and scores"):
                        _write_predictions(folder, examples, ordered, results, references,
                                           sources, scored_targets=round_trip(
                                               list(examples["target"]), tokenizer, task))
            results = D.broadcast_object(results)
    return results


def _write_predictions(folder: Path, examples, predictions: list[str], results: dict,
                       scored: list, scored_sources: list[str] | None, *,
                       scored_targets: list[str] | None = None) -> None:
    """predictions.jsonl, scores.json, and line files for `seq2seq-es score`.

    predictions.jsonl holds everything a rescoring needs, exactly: each row's `reference` (the
    target), `scored_references` where the scores used other texts than [reference] (every
    answer of a QA row, round-tripped texts: see scoring_references) and `scored_source` where
    SARI compared with another text than `source`; `score --references/--sources
    predictions.jsonl` reads them. The line files are one line per example, so a text's own
    newlines become spaces there: predictions.txt, references.txt (the targets as scored,
    `scored_targets`: round-tripped, so that the paper's QA ROUGE on the first answer can be
    rescored from it, as its scripts decoded the labels), sources.txt (what SARI compared
    with), and scored_references.jsonl (every reference each example was scored against)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, prediction in enumerate(predictions):
            row = examples[i]
            record = {"example_id": row.get("example_id", i), "source": row["source"],
                      "prediction": prediction, "reference": row["target"]}
            if list(scored[i]) != [row["target"]]:
                record["scored_references"] = list(scored[i])
            if scored_sources is not None and scored_sources[i] != row["source"]:
                record["scored_source"] = scored_sources[i]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def one_per_line(texts) -> str:
        return "\n".join(text.replace("\n", " ") for text in texts) + "\n"
    (folder / "predictions.txt").write_text(one_per_line(predictions), encoding="utf-8")
    (folder / "references.txt").write_text(
        one_per_line(examples["target"] if scored_targets is None else scored_targets),
        encoding="utf-8")
    (folder / "sources.txt").write_text(
        one_per_line(scored_sources if scored_sources is not None else examples["source"]),
        encoding="utf-8")
    (folder / "scored_references.jsonl").write_text(
        "".join(json.dumps(list(references), ensure_ascii=False) + "\n" for references in scored),
        encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps(results, indent=1))
