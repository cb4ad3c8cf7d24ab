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
import os
import re
from pathlib import Path

from ..errors import ConfigError
from .family import SpecialTokens, get_family
from .registry import ModelSpec, get_model_spec

# A hub id: "name" or "owner/name" (letters, digits, - _ .), not starting with a dot.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# A Spanish probe: a tokenizer that loses most of it in a round trip was built empty or wrong.
PROBE_TEXT = "¿Dónde está la canción? Niño, ñandú, pingüino."


def special_tokens(family: str, tokenizer) -> SpecialTokens:
    """The family's decoder-start/eos/pad/bos ids, read from its tokenizer."""
    return get_family(family).special_tokens(tokenizer)


# ---------------------------------------------------------------------------------------------
# Where a checkpoint comes from


def _looks_like_hub_id(reference: str) -> bool:
    return bool(_HUB_ID.match(reference)) and ".." not in reference


def resolve_checkpoint(reference: str, key: str) -> str:
    """A local folder (checked to exist) or a hub id; ConfigError naming `key` otherwise."""
    expanded = os.path.expanduser(reference)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded):
        raise ConfigError(key, f"{reference} is a file; expected a checkpoint folder")
    if not _looks_like_hub_id(reference):
        raise ConfigError(key, f"local path {reference} does not exist")
    return reference


def _hub_failure(key: str, reference: str, err: Exception) -> ConfigError:
    return ConfigError(key, f"'{reference}' is not a local folder and could not be loaded from "
                            f"the Hugging Face hub ({type(err).__name__}: {err})")


def _is_local(reference: str) -> bool:
    return os.path.isdir(reference)


# ---------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(source: str, *, key: str = "model.path", cache_dir: str | None = None):
    """AutoTokenizer for `source`, refused if it turns a Spanish probe into unknown tokens."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        if _is_local(source):
            raise ConfigError(key, f"no usable tokenizer in {source}: {err}") from err
        raise _hub_failure(key, source, err) from err
    check_tokenizer(tokenizer, source, key=key)
    return tokenizer


def check_tokenizer(tokenizer, source: str, *, key: str = "model.path") -> None:
    """Catch the silently empty tokenizers transformers 5 builds from unsupported arguments
    or from a folder without tokenizer files: most of a Spanish probe must survive a round trip.
    """
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(key, f"the tokenizer loaded from {source} is empty (are its tokenizer "
                               "files missing?)")
    kept = "".join(tokenizer.decode(ids, skip_special_tokens=True).split())
    wanted = "".join(PROBE_TEXT.split())
    if len(kept) * 2 < len(wanted):
        raise ConfigError(key, f"the tokenizer loaded from {source} turns {PROBE_TEXT!r} into "
                               f"{len(ids)} tokens that decode to {kept!r}: its vocabulary is "
                               "empty or not for Spanish")


def checkpoint_config(source: str, key: str, cache_dir: str | None = None):
    """The checkpoint's config; one ConfigError naming `key` when there is none to read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        if _is_local(source):
            raise ConfigError(key, f"{source} holds no usable model config: {err}") from err
        raise _hub_failure(key, source, err) from err


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
        if _is_local(source):
            raise ConfigError(key, f"cannot load the model in {source}: {err}") from err
        raise _hub_failure(key, source, err) from err


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
    """
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), state_dict=state_dict)
    if dtype is not None:
        config_file = Path(out) / "config.json"
        config = json.loads(config_file.read_text())
        _set_dtype(config, TORCH_DTYPE_NAMES[dtype])
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
                            early_stopping: bool = True):
    """One explicit GenerationConfig for a task run, carrying the family's special tokens."""
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
    return GenerationConfig(
        num_beams=num_beams, do_sample=False, max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None, no_repeat_ngram_size=no_repeat_ngram_size,
        **beam_only, **tokens.as_kwargs())
