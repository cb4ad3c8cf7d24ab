"""Peak GPU memory of one training step, estimated from a model's shapes and the batch.

The paper trained every model on one 24 GiB RTX 3090; `fits()` asks whether a run config would
too. The estimate is deliberately simple, a sum of the terms that dominate, each proportional to
a size the config fixes:

    peak = parameters x 18 bytes                    fp32 weights (4), their gradients (4), AdamW's
                                                    two fp32 moments (8): ZeRO-0 on one GPU, and the
                                                    bf16 copies autocast saves for backward (2)
         + micro-batch x per-sequence activations   at the configured (padded) lengths

Per sequence, with S source and T target tokens, d = d_model, H = heads:
- every layer keeps ACT_BYTES_PER_D x d bytes per token it reads (hidden states, projections,
  FFN activations, norms and dropout masks under bf16 autocast; a decoder layer counts
  DECODER_LAYER_FACTOR encoder layers, for its cross-attention block), plus the bf16 keys and
  values each decoder layer projects from the S encoder outputs;
- the LM head's logits: LOGIT_BYTES per target token and vocabulary entry (bf16 logits, their
  fp32 copy and log-softmax for the cross-entropy);
- attention scores only where the implementation materialises them (transformers 5.24, the
  `model.attention hf` default; LED is the shape with an attention window, T5 the family whose
  adapter has relative positions):
  - BART, BERT/RoBERTa pairs: SDPA kernels that keep no score matrix: nothing;
  - T5: SDPA with the relative-position bias materialised: per stack an fp32 bias + mask
    [H, q, k], and per layer what its attention keeps of it (the copy SDPA receives, the bias
    gradient), for encoder self-, decoder self- and cross-attention (T5_BIAS_STACK_BYTES +
    T5_BIAS_LAYER_BYTES x layers per element);
  - LED encoder: sliding-window scores over 2w+1 keys (w = half the attention window 1024),
    LED_WINDOW_BYTES per (head, token, key) per layer, on the source padded to a multiple of
    the window; LED decoder: eager self- and cross-attention, EAGER_SCORE_BYTES per
    (head, query, key) per layer (fp32 softmax output + the bf16 copy the next matmul saves).
- with gradient checkpointing (every layer, non-reentrant) a layer keeps only its fp32 input
  (4 bytes x d per token), and backward holds one layer's activations recomputed, with their
  gradients, CHECKPOINT_INFLIGHT x the largest layer's; logits are not checkpointed.

Assumptions: bf16 autocast (the GPU default, `train.precision auto`); one GPU, ZeRO stage 0, no
offload; fixed batching padded to the configured maximum lengths (the worst batch of a run:
collators pad to the longest row, and a run meets batches of full-length rows); attention
implementations other than `hf` (sdpa, flex) are estimated as `hf`, an upper bound (they
materialise less, BENCHMARKS.md); evaluation and generation are not a training step and are not
counted. Peak is `torch.cuda.max_memory_allocated`; the CUDA context and the allocator's cache
come on top (reserved memory runs some 5-15% above allocated), which is why `fits()` leaves
HEADROOM_GIB of the card unused.

Calibration (tests/test_memory.py parses BENCHMARKS.md): five coefficients are fitted, the
per-token activation bytes (one for BART-like layers, one for T5's), LOGIT_BYTES,
LED_WINDOW_BYTES, T5_BIAS_LAYER_BYTES and CHECKPOINT_INFLIGHT; the others follow from what the
code keeps. They were set against BENCHMARKS.md's measured peak GiB rows: LED-base at 4K, 8K
and 16K source x 512 target, batch 1, hf attention, with and without checkpointing; BART-base
and T5 v1.1-base at batch 32 on mlsum-like and fixed 512x128 lengths; T5 at batch 8 x 512 x 128.
Every row is reproduced within CALIBRATION_TOLERANCE (20%); the largest errors are high (LED at
4K with checkpointing +16%), none is more than 1% low. The BERT2BERT pairs have no measured row
and take BART's per-token coefficient (same post-norm blocks).

Shapes are those of the published configs (no hub access is needed); parameter counts are what
the architectures hold in transformers 5.24 (tests/test_memory.py builds them on the meta device
and counts): T5S's LM head is untied, the *share pairs count each tied weight once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import UnknownNameError

GIB = 2 ** 30
GPU_GIB = 24.0              # one RTX 3090, the paper's GPU
HEADROOM_GIB = 4.0          # CUDA context, allocator cache and fragmentation, estimation error
CALIBRATION_TOLERANCE = 0.20

# Bytes of model state per parameter: fp32 weight, fp32 gradient, AdamW exp_avg and exp_avg_sq,
# and the bf16 copy autocast makes of each weight for the matmuls (saved for backward).
STATE_BYTES_PER_PARAM = 4 + 4 + 8 + 2

# Fitted against BENCHMARKS.md: ACT_BYTES_PER_D, LOGIT_BYTES, LED_WINDOW_BYTES,
# T5_BIAS_LAYER_BYTES, CHECKPOINT_INFLIGHT (see the module docstring); the rest is derived.

# Bytes per token, per layer, per unit of d_model, by family: BART's post-norm GELU layers
# (LED's and the BERT pairs' are the same blocks; the pairs have no measurement of their own),
# T5 v1.1's pre-norm gated-GELU layers with fp32 RMSNorm.
ACT_BYTES_PER_D = {"bart": 54.0, "led": 54.0, "bert2bert": 54.0, "t5": 62.0}
DECODER_LAYER_FACTOR = 1.4      # a decoder layer: self-attention, cross-attention and FFN blocks
LOGIT_BYTES = 8.0               # per target token and vocabulary entry
LED_WINDOW_BYTES = 8.0          # per (head, token, window key) per LED encoder layer
T5_BIAS_STACK_BYTES = 4.0       # fp32 position bias + mask, per (head, query, key), per stack
T5_BIAS_LAYER_BYTES = 4.0       # what each layer's attention keeps of it, per (head, query, key)
EAGER_SCORE_BYTES = 6.0         # fp32 softmax output + bf16 copy, per (head, query, key)
CHECKPOINT_INFLIGHT = 1.75      # one layer recomputed in backward, activations + their gradients
CHECKPOINT_BOUNDARY_BYTES = 4   # fp32 hidden state per token and d, kept at each layer's input


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide training memory, from the model's published config."""

    name: str
    family: str                 # bart | t5 | led | bert2bert
    encoder_layers: int
    decoder_layers: int
    d_model: int
    heads: int
    ffn_dim: int
    vocab_size: int
    parameters: int             # distinct trainable parameters (a tied weight counts once)
    attention_window: int = 0   # LED: keys each token sees in its encoder layers (2 x one side)


def _bert_pair(name: str, vocab: int, parameters: int) -> ModelShape:
    return ModelShape(name, "bert2bert", 12, 12, 768, 12, 3072, vocab, parameters)


# Registry name -> shape. BART-base (vgaraujov/bart-base-spanish), T5 v1.1-base (untied head),
# LED-base-16384 (BARTO's weights, 16384 encoder positions, global projections), and the
# BERT-base pairs: BETO (vocab 31002), RoBERTa-BNE (50262, 514 positions), mBERT (119547); a
# pair's encoder has no pooler, its decoder adds cross-attention and BERT's LM-head transform.
SHAPES: dict[str, ModelShape] = {shape.name: shape for shape in (
    ModelShape("barto", "bart", 6, 6, 768, 12, 3072, 50264, 139_419_648),
    ModelShape("t5s", "t5", 12, 12, 768, 12, 2048, 32128, 247_577_856),
    ModelShape("ledo", "led", 6, 6, 768, 12, 3072, 50264, 161_843_712, attention_window=1024),
    _bert_pair("beto2beto", 31002, 247_510_554),
    _bert_pair("betoshare", 31002, 138_250_266),
    _bert_pair("roberta2roberta", 50262, 277_114_710),
    _bert_pair("robertashare", 50262, 153_061_974),
    _bert_pair("mbert2mbert", 119547, 383_604_219),
    _bert_pair("mbertshare", 119547, 206_341_371),
)}


def get_shape(model: str) -> ModelShape:
    """The shape of a real model by registry name (tiny twins have no entry: they fit anywhere)."""
    try:
        return SHAPES[model]
    except KeyError:
        raise UnknownNameError("model shape", model, SHAPES) from None


@dataclass(frozen=True)
class StepMemory:
    """Estimated peak of one training step, in GiB, by part."""

    state: float                # weights, gradients, optimizer moments, bf16 weight copies
    activations: float          # layers' activations (or checkpoints + the layer in flight)
    attention: float            # materialised attention scores
    logits: float

    @property
    def total(self) -> float:
        return self.state + self.activations + self.attention + self.logits


def _position_bias(shape: ModelShape) -> bool:
    """Whether the family materialises a relative-position bias (T5; its family adapter's
    relative_positions)."""
    from .family import get_family

    return get_family(shape.family).relative_positions


def _attention_bytes(shape: ModelShape, source: int, target: int) -> tuple[float, float]:
    """Materialised score bytes of one sequence: (per encoder layer, per decoder layer)."""
    h = shape.heads
    if shape.attention_window:  # LED: sliding-window encoder scores, eager decoder
        keys = shape.attention_window + 1
        per_encoder_layer = LED_WINDOW_BYTES * h * source * keys
        per_decoder_layer = EAGER_SCORE_BYTES * h * target * (target + source)
        return per_encoder_layer, per_decoder_layer
    if _position_bias(shape):
        return (T5_BIAS_LAYER_BYTES * h * source * source,
                T5_BIAS_LAYER_BYTES * h * target * (target + source))
    return 0.0, 0.0


def _t5_stack_bias_bytes(shape: ModelShape, source: int, target: int) -> float:
    if not _position_bias(shape):
        return 0.0
    return T5_BIAS_STACK_BYTES * shape.heads * (source * source + target * (target + source))


def padded_source(shape: ModelShape, source: int) -> int:
    """LED pads the source to a multiple of its attention window; others take it as it is."""
    if shape.attention_window:
        return math.ceil(source / shape.attention_window) * shape.attention_window
    return source


def estimate(shape: ModelShape, batch: int, source: int, target: int, *,
             checkpointing: bool = False, checkpoint_scope: str = "all") -> StepMemory:
    """Peak GiB of one training step of `batch` sequences of `source` + `target` tokens
    (checkpoint_scope "encoder": the decoder's layers keep their activations)."""
    d = shape.d_model
    source = padded_source(shape, source)
    token_layer = ACT_BYTES_PER_D[shape.family] * d
    encoder_layer = token_layer * source
    # each decoder layer also projects and saves the bf16 keys and values of the S encoder outputs
    decoder_layer = token_layer * DECODER_LAYER_FACTOR * target + 2 * 2 * d * source
    attn_encoder_layer, attn_decoder_layer = _attention_bytes(shape, source, target)
    stack_bias = _t5_stack_bias_bytes(shape, source, target)
    if checkpointing and checkpoint_scope == "encoder":  # the sum: an upper bound
        boundaries = CHECKPOINT_BOUNDARY_BYTES * d * shape.encoder_layers * source
        in_flight = CHECKPOINT_INFLIGHT * (encoder_layer + attn_encoder_layer)
        activations = boundaries + in_flight + shape.decoder_layers * decoder_layer
        attention = stack_bias + shape.decoder_layers * attn_decoder_layer
    elif checkpointing:
        boundaries = CHECKPOINT_BOUNDARY_BYTES * d * (shape.encoder_layers * source
                                                      + shape.decoder_layers * target)
        in_flight = CHECKPOINT_INFLIGHT * max(encoder_layer + attn_encoder_layer,
                                              decoder_layer + attn_decoder_layer)
        activations = boundaries + in_flight
        attention = stack_bias  # the layer in flight's scores are counted in `in_flight`
    else:
        activations = shape.encoder_layers * encoder_layer + shape.decoder_layers * decoder_layer
        attention = (shape.encoder_layers * attn_encoder_layer
                     + shape.decoder_layers * attn_decoder_layer + stack_bias)
    logits = LOGIT_BYTES * target * shape.vocab_size
    return StepMemory(state=shape.parameters * STATE_BYTES_PER_PARAM / GIB,
                      activations=batch * activations / GIB,
                      attention=batch * attention / GIB,
                      logits=batch * logits / GIB)


def micro_batch(cfg) -> int:
    """Sequences per micro-batch: train.batch_size, or for token-budget batching the budget's
    worth of full-length rows (at least one)."""
    if cfg.train.batching in ("token_budget", "bucketed"):
        return max(1, cfg.train.max_tokens // (cfg.data.max_source_length
                                               + cfg.data.max_target_length))
    return cfg.train.batch_size


def estimate_config(cfg) -> StepMemory:
    """The estimate for a composed RunConfig (its model, micro-batch, lengths, checkpointing,
    and an LED's model.attention_window where set: its scores and padding scale with it)."""
    shape = get_shape(cfg.model.name)
    if shape.attention_window and cfg.model.attention_window:
        shape = dataclasses.replace(shape, attention_window=cfg.model.attention_window)
    return estimate(shape, micro_batch(cfg), cfg.data.max_source_length,
                    cfg.data.max_target_length, checkpointing=cfg.model.gradient_checkpointing,
                    checkpoint_scope=cfg.model.checkpoint_scope)


def budget_gib(gpu_gib: float = GPU_GIB, headroom_gib: float = HEADROOM_GIB) -> float:
    return gpu_gib - headroom_gib


def fits(cfg, gpu_gib: float = GPU_GIB, headroom_gib: float = HEADROOM_GIB) -> bool:
    """Whether the config's training step is estimated to fit one `gpu_gib` GPU with headroom."""
    return estimate_config(cfg).total <= budget_gib(gpu_gib, headroom_gib)
