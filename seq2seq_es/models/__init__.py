"""The model zoo: registry names, family adapters, tiny twins, shared pairs and BART->LED.

The registry is imported eagerly (it is plain data that config validation and `seq2seq-es list`
read); everything that needs torch and transformers loads on first use.
"""

from importlib import import_module

from .registry import FAMILIES, MODELS, ModelSpec, get_model_spec

_LAZY = {
    "Family": "family", "get_family": "family", "family_of_model": "family",
    "SpecialTokens": "families", "special_tokens": "families",
    "wire_special_tokens": "families", "build_generation_config": "families",
    "load_model_and_tokenizer": "families", "load_tokenizer": "families",
    "resolve_checkpoint": "families", "save_model": "families",
    "Bert2BertModel": "sharing", "count_parameters": "sharing",
    "shared_parameter_pairs": "sharing",
    "ensure_tiny_checkpoint": "tiny", "tiny_checkpoint_dir": "tiny",
    "convert_bart_to_led": "convert_led", "convert_led_main": "convert_led",
}

__all__ = ["FAMILIES", "MODELS", "ModelSpec", "get_model_spec", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
