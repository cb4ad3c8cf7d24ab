"""Turn a BART checkpoint into an LED (Longformer-Encoder-Decoder) one, as LEDO was made from BARTO.

- Encoder positions: BART's learned position table carries 2 extra leading rows (its position ids
  are offset by 2); LED's table has no offset. The BART rows for positions 0..N-1 (table rows
  2..N+1) are copied over and over until `max_positions` rows are filled.
- Decoder positions: the decoder keeps BART's N positions (the same rows, without the offset).
- Encoder self-attention: BART's q/k/v projections become both the local (query/key/value) and
  the global (query_global/key_global/value_global) projections of Longformer attention, and
  out_proj becomes `output`. Everything else keeps its weights under the LED names.

With a window that covers the whole input, the LED computes exactly what the BART did.

CLI: `seq2seq-es convert-led SRC OUT --max-positions 16384 [--attention-window 1024]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from .. import run_files
from ..errors import ConfigError, Seq2SeqEsError
from .family import NO_HUB_KERNELS

BART_POSITION_OFFSET = 2

# The BART config fields an LED config takes under the same name.
_SHARED_CONFIG_FIELDS = (
    "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim",
    "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads",
    "activation_function", "dropout", "attention_dropout", "activation_dropout", "init_std",
    "encoder_layerdrop", "decoder_layerdrop", "classifier_dropout", "use_cache",
    "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
    "tie_word_embeddings",
)

_ENCODER_SELF_ATTENTION = re.compile(
    r"^led\.encoder\.layers\.(\d+)\.self_attn\.longformer_self_attn\."
    r"(query|key|value)(_global)?\.(weight|bias)$")
_ENCODER_ATTENTION_OUTPUT = re.compile(
    r"^led\.encoder\.layers\.(\d+)\.self_attn\.output\.(weight|bias)$")
_PROJECTION = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def tile_positions(bart_table: torch.Tensor, rows: int) -> torch.Tensor:
    """LED position rows from a BART table: drop the offset rows, repeat to `rows` rows."""
    usable = bart_table[BART_POSITION_OFFSET:]
    repeats = -(-rows // usable.shape[0])
    return usable.repeat(repeats, 1)[:rows].clone()


def _bart_name(led_name: str) -> str:
    """The BART state-dict name whose tensor fills the LED tensor `led_name` (positions aside)."""
    match = _ENCODER_SELF_ATTENTION.match(led_name)
    if match:
        layer, projection, _, kind = match.groups()
        return f"model.encoder.layers.{layer}.self_attn.{_PROJECTION[projection]}.{kind}"
    match = _ENCODER_ATTENTION_OUTPUT.match(led_name)
    if match:
        layer, kind = match.groups()
        return f"model.encoder.layers.{layer}.self_attn.out_proj.{kind}"
    if led_name.startswith("led."):
        return "model." + led_name[len("led."):]
    return led_name                     # lm_head.weight, final_logits_bias


def led_state_dict_from_bart(bart_state: dict[str, torch.Tensor], led_state: dict[str, torch.Tensor]
                             ) -> dict[str, torch.Tensor]:
    """Fill every tensor of an LED state dict from a BART one; errors on anything unmatched."""
    filled = {}
    for name, target in led_state.items():
        if name.endswith("embed_positions.weight"):
            side = name.split(".")[1]                          # encoder | decoder
            value = tile_positions(bart_state[f"model.{side}.embed_positions.weight"],
                                   target.shape[0])
        else:
            source = _bart_name(name)
            if source not in bart_state:
                raise ValueError(f"LED weight {name} has no BART counterpart {source}")
            value = bart_state[source]
        if value.shape != target.shape:
            raise ValueError(f"LED weight {name} {tuple(target.shape)} cannot take BART "
                             f"{tuple(value.shape)}")
        filled[name] = value.to(target.dtype).clone()
    return filled


def led_config_from_bart(bart_config, max_positions: int, attention_window: int):
    from transformers import LEDConfig

    values = {name: getattr(bart_config, name) for name in _SHARED_CONFIG_FIELDS
              if getattr(bart_config, name, None) is not None}
    return LEDConfig(**values, max_encoder_position_embeddings=max_positions,
                     max_decoder_position_embeddings=bart_config.max_position_embeddings,
                     attention_window=[attention_window] * bart_config.encoder_layers)


def _check_arguments(src: str, out: str, max_positions: int, attention_window: int) -> None:
    if max_positions < 1:
        raise ConfigError("--max-positions", f"must be positive, got {max_positions}")
    if attention_window < 2 or attention_window % 2:
        raise ConfigError("--attention-window",
                          f"must be a positive even number (LED needs it), got {attention_window}")
    if max_positions % attention_window:
        # LED pads every input to a multiple of the window: an input padded past the positions
        # fails in the embedding lookup ("index out of range"), whatever its own length.
        raise ConfigError("--max-positions", f"{max_positions} is not a multiple of "
                          f"--attention-window {attention_window}: LED pads each input to a "
                          "multiple of the window, and a padded input longer than the positions "
                          "cannot be embedded")
    if os.path.isdir(out) and os.listdir(out):
        raise ConfigError("OUT", f"{out} exists and is not empty; choose a new folder")
    from ..config import check_folder
    check_folder("OUT", out)  # a file, or a path under one: refused before loading anything


def convert_bart_to_led(src: str, out: str, max_positions: int = 16384,
                        attention_window: int = 1024) -> None:
    """Write to `out` an LED checkpoint (model and tokenizer) built from the BART at `src`."""
    from transformers import BartForConditionalGeneration, LEDForConditionalGeneration

    from .sources import checkpoint_config, load_tokenizer, resolve_checkpoint

    _check_arguments(src, out, max_positions, attention_window)
    if (Path(src) / run_files.CONFIG).is_file() and (Path(src) / run_files.FINAL).is_dir():
        src = str(Path(src) / run_files.FINAL)  # a run folder: its exported model, as evaluate reads
    if (Path(src) / run_files.TRAINER_STATE).is_file():  # "no model_type key" it said
        raise ConfigError("SRC", f"{src} is a training checkpoint (DeepSpeed's states, no model "
                          f"folder): export it first, `seq2seq-es export {src} MODEL_DIR`, then "
                          "convert MODEL_DIR")
    src = resolve_checkpoint(src, "SRC")
    bart_config = checkpoint_config(src, "SRC")
    if bart_config.model_type != "bart":
        raise ConfigError("SRC", f"{src} holds a {bart_config.model_type} model; "
                                 "convert-led needs a BART checkpoint")
    if getattr(bart_config, "scale_embedding", False):
        raise ConfigError("SRC", f"{src} scales its embeddings (scale_embedding=true), "
                                 "which LED does not; it cannot be converted exactly")
    tokenizer = load_tokenizer(src, key="SRC")
    try:
        bart = BartForConditionalGeneration.from_pretrained(src, **NO_HUB_KERNELS)
    except OSError as err:  # a folder with a config but no (readable) weights
        raise ConfigError("SRC", f"no BART weights could be loaded from {src}: {err}") from err
    led = LEDForConditionalGeneration(led_config_from_bart(bart.config, max_positions,
                                                           attention_window))
    led.load_state_dict(led_state_dict_from_bart(bart.state_dict(), led.state_dict()),
                        strict=True)
    led.tie_weights()
    # BART's decoding defaults (forced_bos/eos_token_id, beams, ...) live in its generation
    # config; without them plain `generate` on the LED decoded differently from the BART.
    led.generation_config = copy.deepcopy(bart.generation_config)
    tokenizer.model_max_length = max_positions
    created = not os.path.exists(out)  # else new and empty (_check_arguments)
    try:
        led.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except OSError as err:
        # a half-written folder would load as a model with missing files
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise ConfigError("OUT", f"could not write {out}: {err.strerror or err}"
                          + ("; the partial folder was removed" if created else "")) from err


def convert_led_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seq2seq-es convert-led",
        description="Build an LED checkpoint from a BART checkpoint by copying its position "
                    "embeddings (how LEDO was made from BARTO).")
    parser.add_argument("src", metavar="SRC", help="BART checkpoint: a local folder, a run "
                                                    "folder (its final/) or a hub id")
    parser.add_argument("out", metavar="OUT", help="new folder for the LED checkpoint")
    parser.add_argument("--max-positions", type=int, default=16384,
                        help="encoder positions of the LED (default 16384)")
    parser.add_argument("--attention-window", type=int, default=1024,
                        help="Longformer attention window per layer, even (default 1024)")
    args = parser.parse_args(argv)
    try:
        convert_bart_to_led(args.src, args.out, args.max_positions, args.attention_window)
    except Seq2SeqEsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote LED checkpoint ({args.max_positions} encoder positions, window "
          f"{args.attention_window}) to {args.out}")
    return 0
