"""Family adapters: everything that differs between bart, t5, led and bert2bert, in one place.

A model's spec names its family (`ModelSpec.family`); `spec.adapter` (or `get_family(name)`) is
the family's adapter, and code that treats families differently asks it instead of comparing the
name. An adapter says:

- which checkpoints it loads (`checkpoint_types`, the config.json `model_type` values), what a
  loaded model's `config.model_type` is (`model_type`, how `family_of_model` recognises one), and
  how it loads them (`load_model`);
- its special tokens (`special_tokens`, read from the tokenizer; the table in `families.py`), the
  special tokens at the start of its vocabulary (`vocab_head`, for the bench's synthetic one);
- its attention kernels (`attention_impls`: the `model.attention` values besides `hf` it reads;
  `apply_attention`) and the dropout policy of those kernels (below);
- its collator options (`collator_options`: LED pads to its attention window and builds the
  global attention mask; the others add nothing);
- its LM head and the hidden states fed to it (`lm_head`, `decoder_hidden_states`, for lean CE);
- the keys it reads (`reads`: `data.global_attention` only for LED, `model.attention` only for
  BART, LED and T5; a run's other keys are read whatever the family);
- whether packed batches can keep its documents apart (`packed_attention`: BART and T5, see
  kernels/packed_attention.py) and where its encoder and decoder layers are (`layer_stacks`);
- its positions (`relative_positions`: T5's bias, which the memory estimate counts), the fp16
  policy (`fp16_safe`: T5 overflows in fp16) and the config keys holding its dropout.

Dropout under `model.attention flex`, one policy for LED and T5: FlexAttention has no
attention-probability dropout, and a model is never changed to fit it. Training with attention
dropout > 0 on flex is refused, naming what to use instead: the kernels refuse a training forward
(LED: the encoder self-attention's `attention_dropout`; T5: `dropout_rate`), and
`check_flex_dropout` refuses it before training, under `model.attention`. Evaluation and
generation run no dropout, so flex serves them whatever the model's dropout.

This module imports neither torch nor transformers: they load when a method needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError, UnknownNameError

# Keys a family may not read (`Family.reads`); every other key is read by every family.
FAMILY_KEYS = ("model.attention", "data.global_attention", "model.attention_window")


@dataclass(frozen=True)
class SpecialTokens:
    decoder_start: int
    eos: int
    pad: int
    bos: int | None

    def as_kwargs(self) -> dict[str, int | None]:
        return {"decoder_start_token_id": self.decoder_start, "eos_token_id": self.eos,
                "pad_token_id": self.pad, "bos_token_id": self.bos}


def _require(tokenizer, attribute: str, family: str) -> int:
    value = getattr(tokenizer, attribute, None)
    if value is None:
        raise ConfigError("model.path", f"the tokenizer has no {attribute.replace('_id', '')}, "
                                        f"which a {family} model needs")
    return int(value)


_SEQ2SEQ_INPUTS = frozenset({"input_ids", "attention_mask", "decoder_input_ids",
                             "decoder_attention_mask"})


# transformers 5.25's from_pretrained kernelizes a model by default: layers with a Hub kernel get
# code downloaded from the Hub at load time, which a compute node without internet cannot do
# (the lent H200 failed every from_pretrained with "Kernels are not available"), and which would
# change a run's kernels with the Hub's contents. Our kernels are chosen by model.attention.
NO_HUB_KERNELS = {"use_kernels": False}


class Family:
    """The default behaviour; each family overrides what differs."""

    name: str = ""
    checkpoint_types: frozenset[str] = frozenset()
    model_type: str = ""
    attention_impls: tuple[str, ...] = ()
    global_attention: bool = False
    fp16_safe: bool = True
    dropout_keys: tuple[str, ...] = ()
    vocab_head: tuple[str, ...] = ()
    model_inputs: frozenset[str] = _SEQ2SEQ_INPUTS
    packed_attention: bool = False   # kernels/packed_attention.py masks its attention per document
    relative_positions: bool = False  # T5's position bias; the others learn absolute positions

    def __repr__(self) -> str:
        return f"Family({self.name!r})"

    # -- special tokens and loading -----------------------------------------------------------

    def special_tokens(self, tokenizer) -> SpecialTokens:
        raise NotImplementedError

    def model_class(self):
        raise NotImplementedError

    def config_class(self):
        raise NotImplementedError

    def load_model(self, spec, source: str, config, key: str, cache_dir: str | None):
        """The model in `source` (a checked folder or hub id); OSError passes through."""
        return self.model_class().from_pretrained(source, cache_dir=cache_dir, **NO_HUB_KERNELS)

    def export_config(self, config: dict) -> bool:
        """Make the config.json that save_pretrained wrote say the same to other transformers
        versions (exports are read by users' own code); True if it changed anything."""
        return False

    # -- keys and attention kernels -----------------------------------------------------------

    def reads(self, key: str) -> bool:
        """Whether a run of this family reads `key` (only FAMILY_KEYS can be unread)."""
        if key == "model.attention":
            return bool(self.attention_impls)
        if key in ("data.global_attention", "model.attention_window"):
            return self.global_attention  # both LED's: its sliding window and global tokens
        return True

    def apply_attention(self, model, impl: str, *, config_key: str = "model.attention"):
        """Run the model's attention on `impl`; "hf" and a family without kernels leave it as
        it is (`reads("model.attention")` is False for those: the key is not read)."""
        if impl == "hf" or not self.attention_impls:
            return model
        return self._apply_kernel(model, impl, config_key)

    def _apply_kernel(self, model, impl: str, config_key: str):
        raise NotImplementedError

    def flex_dropout(self, model) -> float:
        """The attention-probability dropout `model` would train with in the modules a flex
        kernel runs (0.0 for a family without kernels)."""
        return 0.0

    def check_flex_dropout(self, model, impl: str, *, config_key: str = "model.attention") -> None:
        """Refuse before training what the flex kernel refuses at its first training forward."""
        if impl != "flex" or "flex" not in self.attention_impls:
            return
        dropout = self.flex_dropout(model)
        if dropout > 0:
            raise ConfigError(config_key, f"flex attention has no attention-probability dropout, "
                                          f"but this {self.name} model would train with "
                                          f"{dropout}; use {config_key} hf or sdpa, which apply "
                                          "it, or model.dropout 0 (every dropout of the model)")

    def check_flex_device(self, impl: str, device_type: str, *,
                          config_key: str = "model.attention") -> None:
        """Refuse training with flex off a GPU: torch's FlexAttention has no CPU backward, and
        the run died with its NotImplementedError at the first step, after the data loaded.
        Evaluation and generation (no backward) may use flex on the CPU."""
        if impl != "flex" or "flex" not in self.attention_impls or device_type == "cuda":
            return
        raise ConfigError(config_key, f"flex attention trains on a GPU only (torch's "
                                      f"FlexAttention has no backward on the {device_type.upper()}); "
                                      f"use {config_key} hf or sdpa here (evaluate and predict may "
                                      "use flex on the CPU)")

    # -- collator -----------------------------------------------------------------------------

    def collator_options(self, cfg, model, tokenizer) -> dict[str, Any] | None:
        """Seq2SeqCollator keywords the family needs, or None for the run's generic padding."""
        return None

    def source_positions(self, model) -> tuple[int, int] | None:
        """(encoder positions of the loaded checkpoint, the multiple its sources are padded
        to), or None where the family has no absolute source positions to run out of."""
        return None

    # -- LM head ------------------------------------------------------------------------------

    def lm_head(self, model) -> tuple[Any, Any, float]:
        """(weight [V, d], bias or None, hidden_scale) of the vocabulary projection."""
        raise NotImplementedError

    def decoder_hidden_states(self, model, inputs: Mapping[str, Any]):
        """[B, T, d]: what the model feeds its vocabulary projection, before `hidden_scale`."""
        raise NotImplementedError

    def layer_stacks(self, model) -> list:
        """The encoder's and the decoder's list of layers."""
        raise NotImplementedError


class _BartLike(Family):
    vocab_head = ("<s>", "<pad>", "</s>", "<unk>")
    dropout_keys = ("dropout", "attention_dropout", "activation_dropout")

    def special_tokens(self, tokenizer) -> SpecialTokens:
        eos = _require(tokenizer, "eos_token_id", self.name)
        return SpecialTokens(decoder_start=eos, eos=eos,
                             pad=_require(tokenizer, "pad_token_id", self.name),
                             bos=_require(tokenizer, "bos_token_id", self.name))

    def lm_head(self, model):
        return model.lm_head.weight, model.final_logits_bias, 1.0

    def source_positions(self, model):
        positions = getattr(model.config, "max_position_embeddings", None)
        return (int(positions), 1) if positions else None

    def decoder_hidden_states(self, model, inputs):
        return self._base(model)(**inputs, use_cache=False).last_hidden_state

    def _base(self, model):
        return model.model

    def layer_stacks(self, model):
        base = self._base(model)
        return [base.encoder.layers, base.decoder.layers]


class Bart(_BartLike):
    name = "bart"
    checkpoint_types = frozenset({"bart"})
    model_type = "bart"
    attention_impls = ("sdpa",)    # kernels/bart_attention.py: flash on padded batches
    packed_attention = True

    def model_class(self):
        from transformers import BartForConditionalGeneration
        return BartForConditionalGeneration

    def config_class(self):
        from transformers import BartConfig
        return BartConfig

    def _apply_kernel(self, model, impl, config_key):
        from ..kernels.bart_attention import apply_bart_attention
        return apply_bart_attention(model, impl, config_key=config_key)


class Led(_BartLike):
    name = "led"
    checkpoint_types = frozenset({"led"})
    model_type = "led"
    attention_impls = ("sdpa", "flex")
    global_attention = True
    model_inputs = _SEQ2SEQ_INPUTS | {"global_attention_mask"}

    def model_class(self):
        from transformers import LEDForConditionalGeneration
        return LEDForConditionalGeneration

    def config_class(self):
        from transformers import LEDConfig
        return LEDConfig

    def _base(self, model):
        return model.led

    def _apply_kernel(self, model, impl, config_key):
        from ..kernels.led_attention import apply_led_attention
        return apply_led_attention(model, impl, config_key=config_key)

    def flex_dropout(self, model):
        from transformers.models.led.modeling_led import LEDEncoderSelfAttention

        return max((float(m.dropout) for m in model.modules()
                    if isinstance(m, LEDEncoderSelfAttention)), default=0.0)

    def set_attention_window(self, model, window: int) -> None:
        """Every encoder layer attends `window` keys around each token (window/2 a side) instead
        of the checkpoint's. The layers read their side at init, the encoder pads its input to
        config.attention_window before them, and an export must say what was trained: all three
        are set. The weights do not depend on the window (LED's local and global projections
        are per token), so a checkpoint fine-tunes at another one."""
        from transformers.models.led.modeling_led import LEDEncoderSelfAttention

        layers = [m for m in model.modules() if isinstance(m, LEDEncoderSelfAttention)]
        for layer in layers:
            layer.one_sided_attn_window_size = window // 2
        model.config.attention_window = [window] * len(layers)

    def source_positions(self, model):
        window = model.config.attention_window
        window = max(window) if isinstance(window, (list, tuple)) else int(window)
        return int(model.config.max_encoder_position_embeddings), window

    def collator_options(self, cfg, model, tokenizer):
        from ..data.collator import sentence_start_ids

        window = model.config.attention_window
        window = max(window) if isinstance(window, (list, tuple)) else int(window)
        return {"pad_to_multiple_of": window, "global_attention": cfg.data.global_attention,
                "sentence_end_ids": sentence_start_ids(tokenizer)
                if cfg.data.global_attention == "sentences" else frozenset()}


class T5(Family):
    name = "t5"
    checkpoint_types = frozenset({"t5"})
    model_type = "t5"
    attention_impls = ("sdpa", "flex")
    fp16_safe = False              # T5 overflows in fp16 (the paper trained T5S without it)
    dropout_keys = ("dropout_rate",)
    vocab_head = ("<pad>", "</s>", "<unk>")
    packed_attention = True
    relative_positions = True

    def special_tokens(self, tokenizer) -> SpecialTokens:
        pad = _require(tokenizer, "pad_token_id", self.name)
        return SpecialTokens(decoder_start=pad, eos=_require(tokenizer, "eos_token_id", self.name),
                             pad=pad, bos=None)

    def model_class(self):
        from transformers import T5ForConditionalGeneration
        return T5ForConditionalGeneration

    def export_config(self, config: dict) -> bool:
        # transformers 5 always writes tie_word_embeddings true and keeps T5 v1.1's untied head
        # as scale_decoder_outputs false; transformers 4 reads tie_word_embeddings true as "tie
        # lm_head to the embeddings and scale the decoder output", a silently different model.
        # v1.1 checkpoints (T5S) say false, which both versions read as an untied, unscaled head.
        if config.get("scale_decoder_outputs") is False and config.get("tie_word_embeddings"):
            config["tie_word_embeddings"] = False
            return True
        return False

    def config_class(self):
        from transformers import T5Config
        return T5Config

    def _apply_kernel(self, model, impl, config_key):
        from ..kernels.t5_attention import apply_t5_attention
        return apply_t5_attention(model, impl, config_key=config_key)

    def flex_dropout(self, model):
        from transformers.models.t5.modeling_t5 import T5Attention

        return max((float(m.dropout) for m in model.modules() if isinstance(m, T5Attention)),
                   default=0.0)

    def layer_stacks(self, model):
        return [model.encoder.block, model.decoder.block]

    def lm_head(self, model):
        config = model.config
        scaled = getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
        return model.lm_head.weight, None, config.d_model ** -0.5 if scaled else 1.0

    def decoder_hidden_states(self, model, inputs):
        encoded = model.encoder(input_ids=inputs["input_ids"],
                                attention_mask=inputs.get("attention_mask"))
        return model.decoder(input_ids=inputs["decoder_input_ids"],
                             attention_mask=inputs.get("decoder_attention_mask"),
                             encoder_hidden_states=encoded.last_hidden_state,
                             encoder_attention_mask=inputs.get("attention_mask"),
                             use_cache=False).last_hidden_state


class Bert2Bert(Family):
    name = "bert2bert"
    checkpoint_types = frozenset({"encoder-decoder", "bert", "roberta"})
    model_type = "encoder-decoder"
    dropout_keys = ("hidden_dropout_prob", "attention_probs_dropout_prob")

    def special_tokens(self, tokenizer) -> SpecialTokens:
        # BERT's [CLS]/[SEP] and RoBERTa's <s>/</s> are both the tokenizer's cls/sep tokens.
        cls = _require(tokenizer, "cls_token_id", self.name)
        return SpecialTokens(decoder_start=cls, eos=_require(tokenizer, "sep_token_id", self.name),
                             pad=_require(tokenizer, "pad_token_id", self.name), bos=cls)

    def model_class(self):
        from .sharing import Bert2BertModel
        return Bert2BertModel

    def config_class(self):
        from transformers import EncoderDecoderConfig
        return EncoderDecoderConfig

    def load_model(self, spec, source, config, key, cache_dir):
        from .sharing import SHARE_FLAG, Bert2BertModel, is_shared_config

        if config.model_type == "encoder-decoder":
            # A fine-tuned pair saved by save_pretrained: its config says whether it was shared.
            if is_shared_config(config) != spec.shared:
                saved = "shared" if is_shared_config(config) else "unshared"
                raise ConfigError(key, f"{source} holds a {saved} encoder-decoder, but model "
                                       f"'{spec.name}' is "
                                       f"{'shared' if spec.shared else 'unshared'}")
            model = Bert2BertModel.from_pretrained(source, cache_dir=cache_dir, **NO_HUB_KERNELS)
            try:
                model.check_tie(source)
            except ValueError as err:
                raise ConfigError(key, str(err)) from err
            return model
        # First load from a pretrained BERT/RoBERTa: both halves start from it, cross-attention
        # new.
        return Bert2BertModel.from_encoder_decoder_pretrained(
            source, source, encoder_add_pooling_layer=False, encoder_cache_dir=cache_dir,
            decoder_cache_dir=cache_dir, **{SHARE_FLAG: spec.shared},
            **{f"{half}_{key}": value for half in ("encoder", "decoder")
               for key, value in NO_HUB_KERNELS.items()})

    @staticmethod
    def _head(decoder) -> tuple[str, Any]:
        """("bert" | "roberta", the module holding the vocabulary projection `.decoder`)."""
        if hasattr(decoder, "cls"):
            return "bert", decoder.cls.predictions
        if hasattr(decoder, "lm_head") and hasattr(decoder.lm_head, "dense"):
            return "roberta", decoder.lm_head
        raise UnknownNameError("lean-CE decoder class", type(decoder).__name__,
                               ["BertLMHeadModel", "RobertaForCausalLM"])

    def layer_stacks(self, model):
        decoder = getattr(model.decoder, model.decoder.base_model_prefix)
        return [model.encoder.encoder.layer, decoder.encoder.layer]

    def lm_head(self, model):
        _, head = self._head(model.decoder)
        return head.decoder.weight, head.decoder.bias, 1.0

    def decoder_hidden_states(self, model, inputs):
        """EncoderDecoderModel's forward up to its decoder's head transform (dense, act, norm)."""
        encoded = model.encoder(input_ids=inputs["input_ids"],
                                attention_mask=inputs.get("attention_mask")).last_hidden_state
        if (model.encoder.config.hidden_size != model.decoder.config.hidden_size
                and getattr(model.decoder.config, "cross_attention_hidden_size", None) is None):
            encoded = model.enc_to_dec_proj(encoded)
        kind, head = self._head(model.decoder)
        base = getattr(model.decoder, model.decoder.base_model_prefix)
        hidden = base(input_ids=inputs["decoder_input_ids"],
                      attention_mask=inputs.get("decoder_attention_mask"),
                      encoder_hidden_states=encoded,
                      encoder_attention_mask=inputs.get("attention_mask"),
                      use_cache=False).last_hidden_state
        if kind == "bert":
            return head.transform(hidden)
        from transformers.activations import gelu
        return head.layer_norm(gelu(head.dense(hidden)))


ADAPTERS: dict[str, Family] = {family.name: family for family in (Bart(), T5(), Led(),
                                                                   Bert2Bert())}


def get_family(name: str) -> Family:
    """The adapter of family `name` (bart | t5 | led | bert2bert)."""
    try:
        return ADAPTERS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("model family", str(name), ADAPTERS) from None


def family_of_model(model, *, kind: str = "model type") -> Family:
    """The adapter of a loaded model, from its `config.model_type`; UnknownNameError naming
    `kind` and the known model types otherwise (a model built outside the registry, e.g. the
    bench's, has no spec to ask)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in ADAPTERS.values():
        if family.model_type == model_type:
            return family
    raise UnknownNameError(kind, str(model_type), [f.model_type for f in ADAPTERS.values()])
