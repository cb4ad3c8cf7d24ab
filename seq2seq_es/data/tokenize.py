"""Tokenize (source, target) examples once, cache the result, and report what truncation cut.

The cache key is a hash of the examples' text, the tokenizer's whole pipeline and specials, the
length limits and the truncation side, so a second run with the same inputs reuses the arrow file
that `datasets.Dataset.map` wrote, and any change in those inputs builds a new one.

Truncation is done by us, not by the tokenizer, so that one tokenizer pass gives both the
untruncated length (for the report) and the truncated ids, and so that the family's special
tokens (BART's <s> ... </s>, T5's trailing </s>, BERT's [CLS] ... [SEP]) survive truncation
from either side (dialogue histories are cut from the left: the newest turns matter most).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ..errors import ConfigError, cache_folder_error
from ..heap import return_freed_memory

TOKENIZER_VERSION = "1"  # bump when the tokenization below changes, to invalidate caches


@dataclass
class TruncationReport:
    """How many sources and targets the length limits cut, per split."""

    split: str
    examples: int = 0
    sources_truncated: int = 0
    targets_truncated: int = 0
    max_source_length: int = 0
    max_target_length: int = 0
    source_lengths_p50: float = 0  # the median: the mean of the middle two of an even count
    source_lengths_max: int = 0
    target_lengths_p50: float = 0
    target_lengths_max: int = 0
    target_lengths: list[int] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        def pct(n: int) -> str:
            return f"{100 * n / max(self.examples, 1):.1f}%"
        return (f"[{self.split}] {self.examples} examples; sources truncated at "
                f"{self.max_source_length}: {self.sources_truncated} "
                f"({pct(self.sources_truncated)}), median {self.source_lengths_p50:g}, "
                f"max {self.source_lengths_max}; targets truncated at "
                f"{self.max_target_length}: {self.targets_truncated} "
                f"({pct(self.targets_truncated)}), median {self.target_lengths_p50:g}, "
                f"max {self.target_lengths_max}")

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out.pop("target_lengths")
        return out


def special_token_frames(tokenizer) -> tuple[list[int], list[int]]:
    """The ids of the special tokens the tokenizer puts before and after a text's own tokens."""
    probe = "casa"
    body = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(body) + 1):
        if full[start:start + len(body)] == body:
            return full[:start], full[start + len(body):]
    raise ValueError("could not locate the text inside the tokenizer's special-token frame")


def check_length_room(key: str, max_length: int, frame: tuple[list[int], list[int]], tokenizer,
                      texts: str) -> None:
    """Refuse a length limit that the special tokens framing every `texts` (source, target)
    fill on their own: truncate_ids could keep no token of the text. Called before any text is
    tokenized; `key` is the config key or option that set the limit, for the error."""
    specials = [*frame[0], *frame[1]]
    if max_length > len(specials):
        return
    names = " and ".join(tokenizer.convert_ids_to_tokens(specials))
    raise ConfigError(key, f"{max_length} leaves no room for a token besides the model's "
                      f"{len(specials)} special token{'s' if len(specials) > 1 else ''} "
                      f"({names}) around every {texts}; give at least {len(specials) + 1}")


def truncate_ids(ids: list[int], max_length: int, lead: int, trail: int, side: str) -> list[int]:
    """Cut `ids` to `max_length`, keeping `lead` leading and `trail` trailing special tokens."""
    if len(ids) <= max_length:
        return ids
    keep = max_length - lead - trail
    if keep < 1:
        raise ValueError(f"max_length {max_length} leaves no room besides {lead + trail} specials")
    head, body, tail = ids[:lead], ids[lead:len(ids) - trail], ids[len(ids) - trail:]
    body = body[-keep:] if side == "left" else body[:keep]
    return head + body + tail


def _tokenizer_fingerprint(tokenizer) -> str:
    """What decides the ids: the whole tokenizers pipeline as it serializes (vocabulary, merges
    or unigram scores, normalizer, pre-tokenizer, post-processor) and the library versions
    that run it. A vocabulary and one probe sentence missed a tokenizer with other merges: its
    run trained on the cached ids of another (an audit: 111 tokens a row where its own gave
    211)."""
    import tokenizers
    import transformers

    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(f"{transformers.__version__}\0{tokenizers.__version__}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # without the truncation and padding a call with truncation=True or padding=True left
        # on the backend: they change no id here (truncation is ours), only the key
        pipeline = {key: value for key, value in json.loads(backend.to_str()).items()
                    if key not in ("truncation", "padding")}
        h.update(json.dumps(pipeline, sort_keys=True).encode())
    else:  # a tokenizer without a tokenizers pipeline: its vocabulary, as before
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                         getattr(tokenizer, "cls_token_id", None),
                         getattr(tokenizer, "sep_token_id", None)]).encode())
    h.update(json.dumps(tokenizer("¿Qué tal, España?")["input_ids"]).encode())
    return h.hexdigest()[:16]


def _examples_fingerprint(examples: datasets.Dataset) -> str:
    h = hashlib.sha256()
    for batch in examples.select_columns(["source", "target"]).iter(batch_size=2048):
        for s, t in zip(batch["source"], batch["target"]):
            h.update(s.encode("utf-8"))
            h.update(b"\x00")
            h.update(t.encode("utf-8"))
            h.update(b"\x01")
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("SEQ2SEQ_ES_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "seq2seq_es")
    return Path(base) / "tokenized"


def leading_label_to_drop(tokenizer, decoder_start_id: int | None) -> int | None:
    """`decoder_start_id` where the tokenizer puts it at the front of every text (BERT's
    [CLS]), so that label_ids drops it; None where it does not repeat the start token."""
    lead = len(special_token_frames(tokenizer)[0])
    first_id = tokenizer("casa")["input_ids"][0]
    return decoder_start_id if lead > 0 and first_id == decoder_start_id else None


def label_ids(tokenizer, targets: list[str], drop_leading_label_id: int | None) -> list[list[int]]:
    """Each target's whole token ids as labels (before truncation): the tokenizer's, less the
    leading `drop_leading_label_id` (leading_label_to_drop). Training's labels and the target
    lengths that `slurm` checks before sbatch both come from here."""
    ids = tokenizer(text_target=targets, add_special_tokens=True, verbose=False)["input_ids"]
    if drop_leading_label_id is None:
        return ids
    return [tgt[1:] if tgt and tgt[0] == drop_leading_label_id else tgt for tgt in ids]


def tokenize_examples(examples: datasets.Dataset, tokenizer, *, split: str, max_source_length: int,
                      max_target_length: int, source_truncation_side: str = "right",
                      drop_leading_label_id: int | None = None, cache_dir: str | None = None,
                      ) -> tuple[datasets.Dataset, TruncationReport]:
    """Return a Dataset with `input_ids`, `labels`, `source_length`, `target_length` (untruncated
    lengths) and `example_id`, and the truncation report.

    `drop_leading_label_id`: the decoder start token, which some tokenizers also put at the front
    of every text (BERT's [CLS]); the decoder is fed it by the shift, so a label that repeats it
    would only teach the model to echo it.
    """
    frame = special_token_frames(tokenizer)
    lead, trail = len(frame[0]), len(frame[1])
    drop_leading_label_id = leading_label_to_drop(tokenizer, drop_leading_label_id)
    label_lead = lead - 1 if drop_leading_label_id is not None else lead
    # Before anything is tokenized (and before training): a limit the specials fill alone
    check_length_room("data.max_source_length", max_source_length, frame, tokenizer, "source")
    check_length_room("data.max_target_length", max_target_length,
                      (frame[0][lead - label_lead:], frame[1]), tokenizer, "target")
    key_material = json.dumps({
        "v": TOKENIZER_VERSION, "examples": _examples_fingerprint(examples),
        "tokenizer": _tokenizer_fingerprint(tokenizer), "src": max_source_length,
        "tgt": max_target_length, "side": source_truncation_side, "drop": drop_leading_label_id,
    }, sort_keys=True)
    key = hashlib.sha256(key_material.encode()).hexdigest()[:20]
    folder = Path(cache_dir) / "tokenized" if cache_dir else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or full home on a compute node (was a traceback)
        raise cache_folder_error(exc, f"tokenizing {split}", cache_dir) from exc
    cache_file = str(folder / f"{split}-{key}.arrow")

    def encode(batch):
        # Whole texts, cut below (and counted in the truncation report); verbose=False: not
        # transformers' warning that a sequence longer than the model "will result in errors".
        sources = tokenizer(batch["source"], add_special_tokens=True, verbose=False)["input_ids"]
        targets = label_ids(tokenizer, batch["target"], drop_leading_label_id)
        out = {"input_ids": [], "labels": [], "source_length": [], "target_length": []}
        for src, tgt in zip(sources, targets):
            out["source_length"].append(len(src))
            out["target_length"].append(len(tgt))
            out["input_ids"].append(truncate_ids(src, max_source_length, lead, trail,
                                                 source_truncation_side))
            out["labels"].append(truncate_ids(tgt, max_target_length, label_lead, trail, "right"))
        return out

    keep = [c for c in ("example_id",) if c in examples.column_names]
    try:
        tokenized = examples.map(
            encode, batched=True, batch_size=256, remove_columns=[c for c in examples.column_names
                                                                  if c not in keep],
            cache_file_name=cache_file, load_from_cache_file=True,
            new_fingerprint=key, desc=f"tokenizing {split}")
    except OSError as exc:  # the cache file (full, or read-only)
        raise cache_folder_error(exc, f"tokenizing {split}", cache_dir) from exc
    return_freed_memory()  # the map's Python lists and Arrow buffers, kept by the allocators
    # Both columns as lists in one read: datasets' lazy column reads a row at a time, 6-7 s of a
    # 50k-row split's cached start (scale audit).
    lengths = tokenized.select_columns(["source_length", "target_length"]).to_dict()
    src_len, tgt_len = lengths["source_length"], lengths["target_length"]
    report = TruncationReport(
        split=split, examples=len(tokenized), max_source_length=max_source_length,
        max_target_length=max_target_length,
        sources_truncated=sum(1 for n in src_len if n > max_source_length),
        targets_truncated=sum(1 for n in tgt_len if n > max_target_length),
        source_lengths_p50=statistics.median(src_len) if src_len else 0,
        source_lengths_max=max(src_len, default=0),
        target_lengths_p50=statistics.median(tgt_len) if tgt_len else 0,
        target_lengths_max=max(tgt_len, default=0), target_lengths=tgt_len)
    return tokenized, report
