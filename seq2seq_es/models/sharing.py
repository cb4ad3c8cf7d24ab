"""BERT-style encoder-decoder pairs, optionally with the encoder's weights shared with the decoder.

transformers 5 removed `tie_encoder_decoder` from EncoderDecoderModel, which BETOShare,
RoBERTaShare and mBERTShare were built with. `Bert2BertModel` brings the tie back through the
library's own tied-weights machinery, so that the same mapping is used

- at construction: every encoder Parameter becomes the decoder's matching Parameter object
  (embeddings and each layer's self-attention, FFN and layer norms); the decoder's
  cross-attention and LM head stay its own;
- at save time: `save_pretrained` writes every encoder tensor as its own copy (a clone of the
  decoder's, since safetensors refuses shared storage), so the file is a complete
  EncoderDecoderModel checkpoint that plain `transformers.EncoderDecoderModel.from_pretrained`
  loads with every trained weight in place;
- at load time: `from_pretrained` ties each encoder weight back to the decoder's: with both copies
  in the file (equal, as written) the decoder's Parameter is kept; with only the decoder's copy
  (exports made before both were written) the missing encoder keys are tied instead of being
  reported as newly initialised. `check_tie` refuses a load that came back untied (transformers
  leaves a pair untied, with a warning only, when its two copies differ).

The flag that turns the tie on, `share_encoder_decoder`, is stored in the model's config, so a
saved checkpoint says whether it was shared.

The encoder's pooler is dropped in every pair: EncoderDecoderModel never uses it (it reads the
encoder's last hidden states only), and parameters that get no gradient break
DistributedDataParallel without `find_unused_parameters` and inflate parameter counts. There is no
config key for it (`add_pooling_layer` is a constructor argument), so plain EncoderDecoderModel
builds an encoder pooler for an export and reports `encoder.pooler.dense.{weight,bias}` as newly
initialised: the only keys it does not find, and ones that never reach a loss, logit or
generated token (BertModel computes the pooled output, EncoderDecoderModel discards it;
tests/test_shared_export.py checks both). The export writes no made-up pooler values.
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
            # transformers' tied-weights mapping: from_pretrained ties these keys, and its alias
            # removal (re.search on these patterns) would drop the encoder's name of a tensor
            # that still shares storage (ours clones them first, see save_pretrained). Anchored,
            # so that "encoder.layer.0..." cannot match inside a decoder name.
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

    def save_pretrained(self, save_directory, is_main_process: bool = True,
                        state_dict: dict | None = None, **kwargs):
        """save_pretrained whose file holds the encoder's weights too (see `standalone_state_dict`)
        when the pair is shared, so that plain EncoderDecoderModel loads it completely."""
        if self.is_shared:
            state_dict = standalone_state_dict(self, state_dict)
        return super().save_pretrained(save_directory, is_main_process=is_main_process,
                                       state_dict=state_dict, **kwargs)

    def check_tie(self, source: str = "the checkpoint") -> None:
        """Raise unless every encoder weight is the decoder's Parameter (a shared pair only)."""
        if not self.is_shared:
            return
        untied = set(self.encoder_to_decoder_names()) - {enc for enc, _ in
                                                           shared_parameter_pairs(self)}
        if untied:
            raise ValueError(f"{source} is a shared encoder-decoder, but {len(untied)} encoder "
                             f"weights could not be tied to the decoder's (their two copies "
                             f"differ), e.g. {sorted(untied)[0]}")


def standalone_state_dict(model: Bert2BertModel, state_dict: dict | None = None) -> dict:
    """The shared pair's state dict with every encoder tensor its own copy of the decoder's.

    `state_dict` is the full state dict to start from (ZeRO-3's consolidated one, where tied
    keys hold one tensor); the module's own by default. Each encoder key gets a CPU copy of the
    decoder's tensor, so both names are in the file with equal values and safetensors sees no
    shared storage. A key that is in neither place is an error, not a silent gap.
    """
    state = dict(model.state_dict() if state_dict is None else state_dict)
    for enc, dec in model.encoder_to_decoder_names().items():
        source = state.get(dec, state.get(enc))
        if source is None:
            raise ValueError(f"the state dict to save has neither {dec} nor its encoder alias "
                             f"{enc}")
        state[dec] = source
        # A fresh copy on the CPU (where save_pretrained writes from): no GPU memory at export.
        state[enc] = source.detach().to("cpu", copy=True)
    return state


def shared_parameter_pairs(model: Bert2BertModel) -> list[tuple[str, str]]:
    """(encoder name, decoder name) of every pair that is one Parameter object."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return [(enc, dec) for enc, dec in model.encoder_to_decoder_names().items()
            if params[enc] is params[dec]]
