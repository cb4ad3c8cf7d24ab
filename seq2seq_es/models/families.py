"""Family adapters: load a model and its tokenizer by registry name, and wire its special tokens.

The family in the model's spec (never a substring of a path) picks the adapter (`family.py`,
`spec.adapter`), which reads the ids below:

| family    | class                       | decoder start | eos         | pad           | bos   |
|-----------|-----------------------------|---------------|-------------|---------------|-------|
| bart, led | Bart/LEDForConditionalGen.  | </s> (2)      | </s>        | <pad>         | <s>   |
| t5        | T5ForConditionalGeneration  | <pad> (0)     | </s>        | <pad>         | none  |
| bert2bert | Bert2BertModel (sharing.py) | [CLS] or <s>  | [SEP], </s> | [PAD], <pad>  | start |

The ids are read from the tokenizer (BETO pads with 1, mBERT with 0). They go onto model.config
(where the loss's label shifting reads them) and onto a clean `model.generation_config` that
carries nothing else, so a checkpoint's leftover decoding settings never leak into a run; each
task run decodes with its own explicit GenerationConfig from `build_generation_config`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import ConfigError
from .family import SpecialTokens, family_of_model, get_family
from .file_modes import readable_as_config
from .registry import ModelSpec, get_model_spec
# Where a checkpoint comes from; importable from here as before.
from .sources import (PROBE_TEXT, check_tokenizer, checkpoint_config,  # noqa: F401
                      hub_failure, is_local, load_tokenizer, resolve_checkpoint)


def special_tokens(family: str, tokenizer) -> SpecialTokens:
    """The family's decoder-start/eos/pad/bos ids, read from its tokenizer."""
    return get_family(family).special_tokens(tokenizer)


# ---------------------------------------------------------------------------------------------
# Loading


def _check_model_type(spec: ModelSpec, config, source: str, key: str) -> None:
    model_type = getattr(config, "model_type", None)
    expected = spec.adapter.checkpoint_types
    if model_type not in expected:
        raise ConfigError(key, f"{source} holds a {model_type} model, but model '{spec.name}' is "
                               f"of family {spec.family} (expects "
                               f"{' or '.join(sorted(expected))})")


def _load_model(spec: ModelSpec, source: str, config, key: str, cache_dir: str | None):
    try:
        return spec.adapter.load_model(spec, source, config, key, cache_dir)
    except OSError as err:
        if is_local(source):
            raise ConfigError(key, f"cannot load the model in {source}: {err}") from err
        raise hub_failure(key, source, err) from err


def wire_special_tokens(model, tokens: SpecialTokens) -> None:
    """Put the family's ids on model.config and give the model clean generation defaults."""
    from transformers import GenerationConfig

    for name, value in tokens.as_kwargs().items():
        setattr(model.config, name, value)
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model.config, "decoder") \
            and hasattr(model.config.decoder, "vocab_size"):
        # EncoderDecoderConfig has no vocabulary of its own; code sizing logits reads this.
        model.config.vocab_size = model.config.decoder.vocab_size
    model.generation_config = GenerationConfig(**tokens.as_kwargs())


def _check_vocabulary(model, tokenizer, source: str, key: str) -> None:
    rows = model.get_output_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ConfigError(key, f"the tokenizer in {source} has {len(tokenizer)} tokens but the "
                               f"model only {rows} output rows: they do not belong together")


def _loading_context(spec: ModelSpec) -> contextlib.ExitStack:
    """Tiny twins are test fixtures: quiet, and seeded so that the bert2bert pairs' new
    cross-attention is the same in every process."""
    from .tiny import quiet_transformers, seeded

    stack = contextlib.ExitStack()
    if spec.tiny:
        stack.enter_context(quiet_transformers())
        stack.enter_context(seeded())
    return stack


def load_model_and_tokenizer(name: str | ModelSpec, path: str | None = None, *,
                             cache_dir: str | None = None):
    """The model registered as `name` and its tokenizer, special tokens wired for its family.

    `path` (a local folder or hub id) overrides the registry's hub id: a fine-tuned checkpoint,
    or a local copy of the pretrained one. A tiny twin without `path` is built on first use.
    """
    from .tiny import ensure_tiny_checkpoint

    spec = get_model_spec(name)
    key = "model.path" if path is not None else "model.name"
    if path is not None:
        source = resolve_checkpoint(str(path), key)
    elif spec.tiny:
        source = str(ensure_tiny_checkpoint(spec))
    else:
        source = resolve_checkpoint(spec.hub_id, key)

    with _loading_context(spec):
        # The config first: it tells a wrong family apart, and an unreachable hub fails once.
        config = checkpoint_config(source, key, cache_dir)
        _check_model_type(spec, config, source, key)
        tokenizer = load_tokenizer(source, key=key, cache_dir=cache_dir)
        model = _load_model(spec, source, config, key, cache_dir)
    # transformers 5 loads in the dtype config.json names: from a bf16 or fp16 export (or hub
    # upload) training would update 16-bit weights, and `evaluate CHECKPOINT` would round the
    # checkpoint's fp32 weights into the 16-bit skeleton. Weights are fp32 here; 16-bit compute
    # is autocast or DeepSpeed's. Upcasting is exact.
    model = model.float()
    _check_vocabulary(model, tokenizer, source, key)
    wire_special_tokens(model, spec.adapter.special_tokens(tokenizer))
    return model, tokenizer


TORCH_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def save_model(model, out: str | Path, *, state_dict: dict | None = None,
               dtype: str | None = None) -> None:
    """save_pretrained into `out`; a complete checkpoint for plain transformers too.

    `state_dict` is the full state dict when the module's own parameters are partitioned or
    held in another precision (the trainer's export in train.export_dtype, where tied keys hold
    one tensor). A shared BERT2BERT pair writes each encoder weight as its own copy next to the
    decoder's (Bert2BertModel.save_pretrained): plain `EncoderDecoderModel.from_pretrained`
    loads every trained weight, and our loader ties the two equal copies back into one Parameter.

    `dtype` (fp32 | bf16 | fp16), the dtype of `state_dict`'s tensors, is written as the config's
    `dtype` too: transformers writes the module's own (bf16 after DeepSpeed's bf16 training) and
    `from_pretrained` loads in the config's dtype by default, which would turn an fp32 file back
    into bf16 weights.

    The family adapter then adjusts config.json for other transformers versions
    (`Family.export_config`: T5 v1.1's untied head).
    """
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), state_dict=state_dict)
    readable_as_config(Path(out))
    config_file = Path(out) / "config.json"
    config = json.loads(config_file.read_text())
    if dtype is not None:
        _set_dtype(config, TORCH_DTYPE_NAMES[dtype])
    if family_of_model(model).export_config(config) or dtype is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _set_dtype(config: dict, name: str) -> None:
    """Set `dtype` (and the older `torch_dtype`, where present) in a config and in its
    sub-configs (an encoder-decoder pair's `encoder` and `decoder`)."""
    config["dtype"] = name
    if "torch_dtype" in config:
        config["torch_dtype"] = name
    for value in config.values():
        if isinstance(value, dict) and "model_type" in value:
            _set_dtype(value, name)


# ---------------------------------------------------------------------------------------------
# Generation


def build_generation_config(name_or_spec: str | ModelSpec, tokenizer, *, num_beams: int,
                            max_new_tokens: int, min_new_tokens: int = 0,
                            length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                            early_stopping: bool = True, do_sample: bool = False,
                            temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0):
    """One explicit GenerationConfig for a task run, carrying the family's special tokens.
    Sampling settings are written only with do_sample (transformers warns about them otherwise,
    and an export must not claim settings its decoding never read)."""
    from transformers import GenerationConfig

    spec = get_model_spec(name_or_spec)
    if num_beams < 1:
        raise ConfigError("gen.num_beams", f"must be at least 1, got {num_beams}")
    if max_new_tokens < 1:
        raise ConfigError("gen.max_new_tokens", f"must be at least 1, got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ConfigError("gen.min_new_tokens",
                          f"must be between 0 and gen.max_new_tokens ({max_new_tokens}), "
                          f"got {min_new_tokens}")
    if no_repeat_ngram_size < 0:
        raise ConfigError("gen.no_repeat_ngram_size", f"must be >= 0, got {no_repeat_ngram_size}")
    tokens = spec.adapter.special_tokens(tokenizer)
    beam_only = {"length_penalty": length_penalty, "early_stopping": early_stopping} \
        if num_beams > 1 else {}
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
    return GenerationConfig(
        num_beams=num_beams, do_sample=do_sample, max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None, no_repeat_ngram_size=no_repeat_ngram_size,
        **beam_only, **sampling, **tokens.as_kwargs())
