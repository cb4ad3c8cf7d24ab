"""Batch tokenized examples: pad per batch, mask label padding, build decoder inputs.

Decoder inputs are the labels shifted right behind the decoder start token, built here rather
than inside the model so that the training loop can compute a token-summed loss itself (the
models' own `labels=` path returns a per-batch mean, which cannot be renormalised over
micro-batches and ranks).

For LED the source is padded to a multiple of the attention window (LED would pad internally
otherwise, on every layer's call) and a global-attention mask is built: the first token by
default, a fixed prefix, or the first token of every sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LABEL_PAD = -100


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple if multiple > 1 else n


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
    pad_to_multiple_of: int = 1           # LED: its attention window; GPUs: 8 for tensor cores
    global_attention: str | None = None   # None (not LED) | first | prefix:N | sentences
    sentence_end_ids: frozenset[int] = frozenset()

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = len(features)
        src_len = _round_up(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        input_ids = torch.full((batch, src_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, src_len), dtype=torch.long)
        for i, f in enumerate(features):
            ids = torch.as_tensor(f["input_ids"], dtype=torch.long)
            input_ids[i, :len(ids)] = ids
            attention_mask[i, :len(ids)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in features[0]:
            tgt_len = max(len(f["labels"]) for f in features)
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
