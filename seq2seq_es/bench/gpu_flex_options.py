"""FlexAttention forward/backward at 16K with a +-512 band: kernel options (block sizes, warps,
stages) compared on a CUDA device, the floor the LED flex encoder attention is measured against.

    python3 -m seq2seq_es.bench.gpu_flex_options
"""
import sys
import time

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention


def main() -> int:
    dev = "cuda"
    S, H, D, W = 16384, 12, 64, 512
    def band(b, h, q, k): return (q - k <= W) & (k - q <= W)
    mask = create_block_mask(band, 1, 1, S, S, device=dev)
    q, k, v = (torch.randn(1, H, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    def bench(fn, n=10):
        for _ in range(3): fn()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(n): fn()
        torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e3
    for name, opts in [("default", None), ("64x64", {"BLOCK_M": 64, "BLOCK_N": 64}),
                       ("128x64 w4 s3", {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}),
                       ("128x128 w8 s2", {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2})]:
        try:
            f = torch.compile(lambda q, k, v: flex_attention(q, k, v, block_mask=mask, kernel_options=opts))
            fwd = bench(lambda: f(q, k, v))
            with torch.no_grad():
                fwd_ng = bench(lambda: f(q, k, v))
            def fb():
                out = f(q, k, v); out.sum().backward()
            both = bench(fb)
            print(f"{name:14s} fwd(grad) {fwd:7.3f} ms  fwd(no_grad) {fwd_ng:7.3f} ms  fwd+bwd {both:7.3f} ms", flush=True)
        except Exception as e:
            print(name, "error", type(e).__name__, str(e)[:200], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
