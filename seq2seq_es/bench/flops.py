"""Model FLOPs of a training step, and the matmul ceiling that MFU is measured against."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShape:
    encoder_layers: int
    decoder_layers: int
    d_model: int
    attention_dim: int           # heads x head size (T5's inner dim need not equal d_model)
    ffn_dim: int
    ffn_matrices: int            # 2 (dense GELU) or 3 (T5 v1.1's gated GELU: wi_0, wi_1, wo)
    vocab_size: int

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        if config.model_type == "t5":
            return cls(config.num_layers, config.num_decoder_layers, config.d_model,
                       config.num_heads * config.d_kv, config.d_ff,
                       3 if config.is_gated_act else 2, config.vocab_size)
        return cls(config.encoder_layers, config.decoder_layers, config.d_model, config.d_model,
                   config.encoder_ffn_dim, 2, config.vocab_size)


def forward_flops(shape: ModelShape, batch: int, source_len: int, target_len: int) -> float:
    """Matmul and attention FLOPs (2 per multiply-add) of one forward pass on padded shapes.

    With B = batch, S = padded source length, T = padded target length, d = d_model,
    h = attention dim (heads x head size), f = FFN dim, m = FFN matrices, V = vocabulary:

        encoder, per layer:  2*B*S*(4*d*h + m*d*f)           q, k, v, o and the FFN
                             + 4*B*S*S*h                      scores Q.K^T and the weighted sum A.V
        decoder, per layer:  2*B*T*(4*d*h + 2*d*h + m*d*f)   self q,k,v,o; cross q,o; FFN
                             + 2*B*S*2*d*h                    cross-attention k, v of the memory
                             + 4*B*T*T*h + 4*B*T*S*h          self (full square) and cross attention
        LM head:             2*B*T*d*V

    Padding is counted: these are the shapes the kernels compute. Causal self-attention is
    counted as a full square and embeddings, norms, activations and the loss are not counted.
    """
    B, S, T = batch, source_len, target_len
    d, h, f, m, V = (shape.d_model, shape.attention_dim, shape.ffn_dim, shape.ffn_matrices,
                     shape.vocab_size)
    encoder = 2 * B * S * (4 * d * h + m * d * f) + 4 * B * S * S * h
    decoder = (2 * B * T * (6 * d * h + m * d * f) + 2 * B * S * 2 * d * h
               + 4 * B * T * T * h + 4 * B * T * S * h)
    head = 2 * B * T * d * V
    return float(shape.encoder_layers * encoder + shape.decoder_layers * decoder + head)


def train_flops(shape: ModelShape, batch: int, source_len: int, target_len: int) -> float:
    """Forward plus backward, counted as 3x the forward (backward computes two matmuls per one)."""
    return 3.0 * forward_flops(shape, batch, source_len, target_len)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, seconds: float = 1.0) -> dict:
    """Measured FLOP/s of one large matmul: bf16 8192^3 on a GPU, fp32 1024^3 on the CPU.

    Repeats the product for about `seconds` after a warm-up and keeps the best rate.
    """
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    _synchronize(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        repeats = 10
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    del a, b
    return {"flops_per_s": 2.0 * n ** 3 / best, "matmul": f"{n}^3 {str(dtype).split('.')[-1]}"}
