"""BERT-style encoder-decoder pairs, optionally with the encoder's weights shared with the decoder.

transformers 5 removed `tie_encoder_decoder` from EncoderDecoderModel, which BETOShare,
RoBERTaShare and mBERTShare were built with. `Bert2BertModel` brings the tie back through the
library's own tied-weights machinery, so that the same mapping is used

- at construction: every encoder Parameter becomes the decoder's matching Parameter object
  (embeddings and each layer's self-attention, FFN and layer norms); the decoder's
  cross-attention and LM head stay its own;
- at save time: `save_pretrained` drops the encoder's aliases from the safetensors file (which
  refuses shared tensors) instead of failing;
- at load time: `from_pretrained` re-ties the encoder to the loaded decoder weights instead of
  reporting the missing encoder keys as newly initialised.

The flag that turns the tie on, `share_encoder_decoder`, is stored in the model's config, so a
saved checkpoint says whether it was shared.

The encoder's pooler is dropped in every pair: EncoderDecoderModel never uses it, and parameters
that get no gradient break DistributedDataParallel without `find_unused_parameters` and inflate
parameter counts.
"""

from __future__ import annotations

import re

import torch
from transformers import AutoModel, EncoderDecoderModel, PreTrainedModel

SHARE_FLAG = "share_encoder_decoder"


def is_shared_config(config) -> bool:
    return bool(getattr(config, SHARE_FLAG, False))


def count_parameters(model: torch.nn.Module) -> int:
    """Number of scalars in the model's distinct Parameters (a shared Parameter counts once)."""
    unique = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(p.numel() for p in unique.values())


def _drop_pooler(encoder: torch.nn.Module) -> None:
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


class Bert2BertModel(EncoderDecoderModel):
    """EncoderDecoderModel for BERT-like pairs (BERT, RoBERTa): no encoder pooler, optional tie."""

    def __init__(self, config=None, encoder: PreTrainedModel | None = None,
                 decoder: PreTrainedModel | None = None):
        if encoder is None and config is not None:
            encoder = AutoModel.from_config(config.encoder, add_pooling_layer=False)
        if encoder is not None:
            _drop_pooler(encoder)
        super().__init__(config=config, encoder=encoder, decoder=decoder)
        if self.is_shared:
            # save_pretrained matches these patterns (re.search) to decide which alias of a
            # shared tensor to leave out of the file: the encoder's. Anchored, so that
            # "encoder.layer.0..." cannot match inside a decoder name.
            self._tied_weights_keys = {f"^{re.escape(enc)}$": dec for enc, dec
                                       in self.encoder_to_decoder_names().items()}

    @property
    def is_shared(self) -> bool:
        return is_shared_config(self.config)

    def encoder_to_decoder_names(self) -> dict[str, str]:
        """{encoder parameter name: the decoder parameter it is tied to}, full model names."""
        decoder_base = getattr(self.decoder, self.decoder.base_model_prefix)
        decoder_params = dict(decoder_base.named_parameters(remove_duplicate=False))
        prefix = self.decoder.base_model_prefix
        mapping = {}
        for name, param in self.encoder.named_parameters(remove_duplicate=False):
            partner = decoder_params.get(name)
            if partner is None or partner.shape != param.shape:
                raise ValueError(f"cannot share encoder weight {name}: the decoder has no "
                                 "parameter of that name and shape")
            mapping[f"encoder.{name}"] = f"decoder.{prefix}.{name}"
        return mapping

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        mapping = super().get_expanded_tied_weights_keys(all_submodels=all_submodels)
        if self.is_shared:
            mapping.update(self.encoder_to_decoder_names())
        return mapping


def shared_parameter_pairs(model: Bert2BertModel) -> list[tuple[str, str]]:
    """(encoder name, decoder name) of every pair that is one Parameter object."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return [(enc, dec) for enc, dec in model.encoder_to_decoder_names().items()
            if params[enc] is params[dec]]
