"""transformers' SDPA masks built without reading them back to the host.

transformers decides whether SDPA may go without a mask by reading the padding mask
(`mask.all()` in masking_utils): the host waits for the device at every such read, up to three
times per forward (issue 12.1 counts them: tests/test_step_syncs.py). A kernel of ours that takes
its masks from transformers registers `read_free_mask` under its own attention-implementation
name (`register`); it builds:
- bidirectional masks (encoder self-attention, cross-attention): the 2D padding mask as a
  [B, 1, 1, keys] boolean mask (None without one), the same for every query;
- a plain causal mask (decoder self-attention) without a 2D mask, over as many keys as queries
  or for one query: None, SDPA's is_causal (transformers' skip, which needs no read there);
- any other mask as transformers' SDPA mask, never skipped (its skip is what reads).
A batch without padding then needs no mask at all: `drop_full_mask` takes it out of the CPU batch
before TrainStep copies it (the kernel then runs maskless, as transformers' skip would), unless the
model is compiled: there a mask that comes and goes with the data would double the graphs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import (AttentionMaskInterface, bidirectional_mask_function,
                                        causal_mask_function, prepare_padding_mask, sdpa_mask)

# Our attention-implementation names whose masks read_free_mask builds (see register).
READ_FREE_IMPLEMENTATIONS: set[str] = set()


def read_free_mask(**kwargs) -> Tensor | None:
    """transformers' mask hook (AttentionMaskInterface's keyword arguments)."""
    if kwargs.get("mask_function") is bidirectional_mask_function:
        padding = prepare_padding_mask(kwargs.get("attention_mask"), kwargs["kv_length"],
                                       kwargs.get("kv_offset", 0))
        return None if padding is None else padding[:, None, None, :].bool()
    plain_causal = kwargs.get("mask_function") is causal_mask_function
    if plain_causal and kwargs.get("attention_mask") is None \
            and kwargs["q_length"] in (1, kwargs["kv_length"]):
        return None
    kwargs["allow_is_causal_skip"] = kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(**kwargs)


def register(name: str, attention: Callable) -> None:
    """Masks by read_free_mask and attention by `attention` for models set to `name`."""
    AttentionMaskInterface.register(name, read_free_mask)
    AttentionInterface.register(name, attention)
    READ_FREE_IMPLEMENTATIONS.add(name)


def builds_read_free_masks(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in READ_FREE_IMPLEMENTATIONS


def drop_full_mask(batch: dict) -> dict:
    """The CPU batch without its attention_mask where no source token is padding, checked in host
    memory before the copy (a Tensor read would count as one in tests/test_step_syncs.py)."""
    mask = batch.get("attention_mask")
    if mask is not None and mask.device.type == "cpu" and mask.numpy().all():
        return {k: v for k, v in batch.items() if k != "attention_mask"}
    return batch
