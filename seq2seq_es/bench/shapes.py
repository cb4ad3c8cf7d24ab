"""Random-weight models of the real shapes, built from configs (no hub, no tokenizer files).

Every shape names its family, its special ids and its config; `build_model` makes a fresh model
with the same initial weights for the same seed, on the device directly (initialising a 250M
parameter T5 on the CPU and copying it would cost seconds per row).

Beware: `BartConfig()` without arguments has BART-large's shape, so every field is spelled out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UnknownNameError


@dataclass(frozen=True)
class BenchShape:
    name: str
    family: str                  # bart | t5
    description: str
    config: dict[str, Any] = field(hash=False)

    @property
    def adapter(self):
        """The family's adapter (models/family.py): config and model classes, dropout keys."""
        from ..models.family import get_family

        return get_family(self.family)

    @property
    def pad_token_id(self) -> int:
        return int(self.config["pad_token_id"])

    @property
    def decoder_start_token_id(self) -> int:
        return int(self.config["decoder_start_token_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def first_plain_id(self) -> int:
        """Lowest id that is no special token: synthetic text draws from [first_plain_id, vocab)."""
        return len(self.adapter.vocab_head)

    @property
    def max_positions(self) -> int | None:
        """Learned positions (BART); None for T5's relative positions."""
        return self.config.get("max_position_embeddings")


def _bart(d_model: int, layers: int, heads: int, ffn: int, vocab: int, dropout: float) -> dict:
    return dict(vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                encoder_attention_heads=heads, decoder_attention_heads=heads,
                encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_position_embeddings=1024,
                dropout=dropout, attention_dropout=dropout, activation_dropout=dropout,
                activation_function="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                decoder_start_token_id=2, forced_eos_token_id=None, scale_embedding=False)


def _t5(d_model: int, d_kv: int, heads: int, layers: int, d_ff: int, vocab: int,
        dropout: float) -> dict:
    return dict(vocab_size=vocab, d_model=d_model, d_kv=d_kv, num_heads=heads, num_layers=layers,
                num_decoder_layers=layers, d_ff=d_ff, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False, dropout_rate=dropout,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


SHAPES: dict[str, BenchShape] = {s.name: s for s in (
    BenchShape("barto", "bart", "BART-base shape (BARTO): 6+6 layers, d 768, vocab 50264",
               _bart(768, 6, 12, 3072, 50264, 0.1)),
    BenchShape("t5s", "t5", "T5 v1.1-base shape (T5S): 12+12 layers, d 768, d_ff 2048 gated-gelu, "
               "vocab 32128", _t5(768, 64, 12, 12, 2048, 32128, 0.1)),
    BenchShape("bart-large-shape", "bart", "BART-large shape: 12+12 layers, d 1024, vocab 50265",
               _bart(1024, 12, 16, 4096, 50265, 0.1)),
    BenchShape("barto-tiny", "bart", "tiny BART (2+2 layers, d 32, vocab 512) for CPU tests",
               _bart(32, 2, 2, 64, 512, 0.1)),
    BenchShape("t5s-tiny", "t5", "tiny T5 v1.1 (2+2 layers, d 32, vocab 512) for CPU tests",
               _t5(32, 16, 2, 2, 64, 512, 0.1)),
)}


def get_shape(name: str) -> BenchShape:
    try:
        return SHAPES[name]
    except KeyError:
        raise UnknownNameError("bench model", name, SHAPES) from None


def make_config(shape: BenchShape, dropout: float | None = None):
    values = dict(shape.config)
    if dropout is not None:
        values.update({key: dropout for key in shape.adapter.dropout_keys})
    return shape.adapter.config_class()(**values)


def build_model(shape: BenchShape, device: torch.device, seed: int = 0,
                dropout: float | None = None) -> torch.nn.Module:
    """A fresh model in training mode, fp32 weights, initialised from `seed` on `device`."""
    config = make_config(shape, dropout)
    cls = shape.adapter.model_class()
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(config)
    return model.train()
