"""Batch tokenized examples: pad per batch, mask label padding, build decoder inputs.

Decoder inputs are the labels shifted right behind the decoder start token, built here rather
than inside the model so that the training loop can compute a token-summed loss itself (the
models' own `labels=` path returns a per-batch mean, which cannot be renormalised over
micro-batches and ranks).

For LED the source is padded to a multiple of the attention window (LED would pad internally
otherwise, on every layer's call) and a global-attention mask is built: the first token by
default, a fixed prefix, or the first token of every sentence.

With length buckets (`train.batching=bucketed`, data/length_buckets.py) the source and target are
padded up to the next bucket value rather than to the batch's longest example, so a run sees only
the plan's few (rows, source, target) shapes; a length beyond the largest bucket (validation data
longer than any training example) falls back to the plain rounding. `mark_dynamic` marks the
batch and length dimensions of every tensor dynamic for torch.compile (one graph for all shapes),
the alternative to compiling one static graph per bucket shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LABEL_PAD = -100


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple if multiple > 1 else n


def _next_bucket(length: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket >= length; None without buckets or beyond the largest."""
    for value in buckets:
        if value >= length:
            return value
    return None


def sentence_start_ids(tokenizer) -> frozenset[int]:
    """Ids of tokens that end a sentence; the token after one starts a new sentence."""
    enders = (".", "!", "?", "…")
    ids = set()
    for token, idx in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if text and text[-1] in enders:
            ids.add(idx)
    return frozenset(ids)


@dataclass
class Seq2SeqCollator:
    pad_token_id: int
    decoder_start_token_id: int
    pad_to_multiple_of: int = 1           # sources only. LED: its attention window; GPUs: 8
                                          # for tensor cores; 64 under model.compile
    global_attention: str | None = None   # None (not LED) | first | prefix:N | sentences
    sentence_end_ids: frozenset[int] = frozenset()
    source_buckets: tuple[int, ...] = ()  # bucketed batching: pad sources up to the next of these
    target_buckets: tuple[int, ...] = ()  # ... and targets up to the next of these
    mark_dynamic: bool = False            # model.compile with dynamic shapes: mark dims dynamic

    def set_buckets(self, source: tuple[int, ...], target: tuple[int, ...]) -> None:
        if any(value % self.pad_to_multiple_of for value in source):
            raise ValueError(f"source buckets {list(source)} are not all multiples of "
                             f"{self.pad_to_multiple_of}")
        self.source_buckets, self.target_buckets = tuple(sorted(source)), tuple(sorted(target))

    def source_length(self, longest: int) -> int:
        """The padded source length of a batch whose longest source has `longest` tokens."""
        bucket = _next_bucket(longest, self.source_buckets)
        return bucket if bucket is not None else _round_up(longest, self.pad_to_multiple_of)

    def target_length(self, longest: int) -> int:
        bucket = _next_bucket(longest, self.target_buckets)
        return bucket if bucket is not None else longest

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = len(features)
        src_len = self.source_length(max(len(f["input_ids"]) for f in features))
        input_ids = torch.full((batch, src_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, src_len), dtype=torch.long)
        for i, f in enumerate(features):
            ids = torch.as_tensor(f["input_ids"], dtype=torch.long)
            input_ids[i, :len(ids)] = ids
            attention_mask[i, :len(ids)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in features[0]:
            tgt_len = self.target_length(max(len(f["labels"]) for f in features))
            labels = torch.full((batch, tgt_len), LABEL_PAD, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, :len(f["labels"])] = torch.as_tensor(f["labels"], dtype=torch.long)
            decoder_input_ids = torch.full_like(labels, self.pad_token_id)
            decoder_input_ids[:, 0] = self.decoder_start_token_id
            shifted = labels[:, :-1].clone()
            shifted[shifted == LABEL_PAD] = self.pad_token_id
            decoder_input_ids[:, 1:] = shifted
            out["labels"] = labels
            out["decoder_input_ids"] = decoder_input_ids
            # No decoder attention mask: padding sits after the last label and the decoder is
            # causal, so real positions never see it, and its loss is masked by LABEL_PAD.
        if self.global_attention is not None:
            out["global_attention_mask"] = self._global_mask(input_ids, attention_mask)
        if "example_index" in features[0]:
            out["example_index"] = torch.as_tensor([f["example_index"] for f in features])
        if self.mark_dynamic:
            for key in ("input_ids", "attention_mask", "labels", "decoder_input_ids",
                        "global_attention_mask"):
                if key in out:
                    # maybe_: no error where the compiler specialises a dimension (size 1).
                    torch._dynamo.maybe_mark_dynamic(out[key], 0)
                    torch._dynamo.maybe_mark_dynamic(out[key], 1)
        return out

    def _global_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(input_ids)
        if self.global_attention == "first":
            mask[:, 0] = 1
        elif self.global_attention.startswith("prefix:"):
            mask[:, :int(self.global_attention.split(":", 1)[1])] = 1
        elif self.global_attention == "sentences":
            mask[:, 0] = 1
            ends = torch.zeros_like(input_ids, dtype=torch.bool)
            for token_id in self.sentence_end_ids:
                ends |= input_ids == token_id
            mask[:, 1:] |= ends[:, :-1].long()
        else:
            raise ValueError(f"unknown global attention '{self.global_attention}'")
        return mask * attention_mask
