"""The model zoo by registry name: which family adapter loads a model, from where, and its limits.

A model is chosen by its registry name, never by a substring of a path: the family field alone
picks the adapter in `families.py`. Every real model has a `-tiny` twin with the same architecture
class, random weights and a tokenizer trained on the fly (see `tiny.py`), for tests and the demo.

Position limits are what `config.validate` checks source and target lengths against:
- BART (BARTO): 1024 learned positions on each side.
- T5 (T5S): relative position buckets, so there is no hard limit. It was pre-trained on 512-token
  inputs and the paper fine-tuned it on 1024; attention memory grows quadratically with length,
  so we accept up to 4096 tokens on either side as a practical cap rather than a model limit.
- LED (LEDO): 16384 encoder positions, the decoder keeps BART's 1024.
- BERT-like pairs: 512 (BERT's 512 rows; RoBERTa's 514 rows minus the 2 its padding offset uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import UnknownNameError

FAMILIES = ("bart", "t5", "led", "bert2bert")
TINY_SUFFIX = "-tiny"


@dataclass(frozen=True)
class ModelSpec:
    name: str                    # registry name: "barto", "barto-tiny", ...
    family: str                  # "bart" | "t5" | "led" | "bert2bert": picks the adapter
    hub_id: str | None           # checkpoint to load; for a tiny twin, the real model it mimics
    tiny: bool
    shared: bool                 # encoder weights tied to the decoder's (the *share models)
    max_source_positions: int
    max_target_positions: int
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)
    description: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name}: unknown family {self.family!r}")
        # A read-only view, so that one run's composition cannot leak into the registry.
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    @property
    def adapter(self):
        """The family's adapter (`family.Family`): every family-specific behaviour asks it."""
        from .family import get_family

        return get_family(self.family)

    @property
    def paper_name(self) -> str:
        """The name the paper's tables give the model (BARTO, BETOShare, ...); a tiny twin keeps
        its registry name (no paper has it)."""
        return self.name if self.tiny else PAPER_NAMES.get(self.name, self.name)

    @property
    def base_name(self) -> str:
        """The real model's registry name (the name itself for a real model)."""
        return self.name[: -len(TINY_SUFFIX)] if self.tiny else self.name


_BERT_DEFAULTS = {"data.max_source_length": 512}
# As the paper's tables write them (mBERTShare, not in the paper, named like its siblings).
PAPER_NAMES = {"barto": "BARTO", "t5s": "T5S", "ledo": "LEDO", "beto2beto": "BETO2BETO",
               "betoshare": "BETOShare", "roberta2roberta": "RoBERTa2RoBERTa",
               "robertashare": "RoBERTaShare", "mbert2mbert": "mBERT2mBERT",
               "mbertshare": "mBERTShare"}

_REAL_MODELS = (
    ModelSpec("barto", "bart", "vgaraujov/bart-base-spanish", False, False, 1024, 1024,
              description="BARTO: Spanish BART-base (6+6 layers)"),
    ModelSpec("t5s", "t5", "vgaraujov/t5-base-spanish", False, False, 4096, 4096,
              description="T5S: Spanish T5 v1.1-base (12+12 layers, untied LM head)"),
    ModelSpec("ledo", "led", "vgaraujov/led-base-16384-spanish", False, False, 16384, 1024,
              description="LEDO: BARTO turned into an LED with 16384 encoder positions"),
    ModelSpec("beto2beto", "bert2bert", "dccuchile/bert-base-spanish-wwm-cased", False, False,
              512, 512, _BERT_DEFAULTS, "BETO2BETO: encoder-decoder from two copies of BETO"),
    ModelSpec("betoshare", "bert2bert", "dccuchile/bert-base-spanish-wwm-cased", False, True,
              512, 512, _BERT_DEFAULTS, "BETOShare: BETO2BETO with encoder tied to decoder"),
    ModelSpec("roberta2roberta", "bert2bert", "PlanTL-GOB-ES/roberta-base-bne", False, False,
              512, 512, _BERT_DEFAULTS, "RoBERTa2RoBERTa: encoder-decoder from RoBERTa-BNE"),
    ModelSpec("robertashare", "bert2bert", "PlanTL-GOB-ES/roberta-base-bne", False, True,
              512, 512, _BERT_DEFAULTS, "RoBERTaShare: RoBERTa2RoBERTa with shared weights"),
    ModelSpec("mbert2mbert", "bert2bert", "bert-base-multilingual-cased", False, False,
              512, 512, _BERT_DEFAULTS, "mBERT2mBERT: multilingual BERT baseline"),
    ModelSpec("mbertshare", "bert2bert", "bert-base-multilingual-cased", False, True,
              512, 512, _BERT_DEFAULTS, "mBERTShare: mBERT2mBERT with shared weights"),
)

# The tiny LED has 4096 encoder positions, enough for long-input tests at a few seconds each.
_TINY_SOURCE_POSITIONS = {"ledo": 4096}


def _tiny_twin(spec: ModelSpec) -> ModelSpec:
    return ModelSpec(
        name=spec.name + TINY_SUFFIX, family=spec.family, hub_id=spec.hub_id, tiny=True,
        shared=spec.shared,
        max_source_positions=_TINY_SOURCE_POSITIONS.get(spec.name, spec.max_source_positions),
        max_target_positions=spec.max_target_positions, defaults=dict(spec.defaults),
        description=f"random-weight miniature of {spec.name} with a tokenizer trained on the fly")


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _REAL_MODELS}
MODELS.update({twin.name: twin for twin in map(_tiny_twin, _REAL_MODELS)})


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under `name`; UnknownNameError listing the known names otherwise."""
    if isinstance(name, ModelSpec):
        return name
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("model", str(name), MODELS) from None
