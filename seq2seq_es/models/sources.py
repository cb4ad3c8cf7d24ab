"""Where a checkpoint comes from: a local folder or a hub id, its config and its tokenizer, each
failure one ConfigError naming the config key.

families.py (loading by registry name) and convert_led.py (BART -> LED) both read checkpoints
through these; neither imports the other, so the tiny LED build (tiny.py -> convert_led.py) and
the loading of tiny twins (families.py -> tiny.py) make no import cycle.
"""

from __future__ import annotations

import os
import re

from ..errors import ConfigError

# A hub id: "name" or "owner/name" (letters, digits, - _ .), not starting with a dot.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# A Spanish probe: a tokenizer that loses most of it in a round trip was built empty or wrong.
PROBE_TEXT = "¿Dónde está la canción? Niño, ñandú, pingüino."


# ---------------------------------------------------------------------------------------------
# Where a checkpoint comes from


def looks_like_hub_id(reference: str) -> bool:
    return bool(_HUB_ID.match(reference)) and ".." not in reference


def resolve_checkpoint(reference: str, key: str) -> str:
    """A local folder (checked to exist) or a hub id; ConfigError naming `key` otherwise."""
    expanded = os.path.expanduser(reference)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded):
        raise ConfigError(key, f"{reference} is a file; expected a checkpoint folder")
    if not looks_like_hub_id(reference):
        raise ConfigError(key, f"local path {reference} does not exist")
    return reference


def hub_failure(key: str, reference: str, err: Exception) -> ConfigError:
    # A compute node without network is the usual cause on a cluster: the way out is a download
    # on a machine that has it, into the cache the jobs read, or a local copy.
    local = "a local folder as SRC" if key == "SRC" else "a local copy with --model.path DIR"
    return ConfigError(key, f"'{reference}' is not a local folder and could not be loaded from "
                            f"the Hugging Face hub ({type(err).__name__}: {err}). Without the "
                            f"hub here (a compute node without network, HF_HUB_OFFLINE=1): "
                            f"`hf download {reference}` where there is network, into the HF_HOME "
                            f"the jobs read, or {local}")


def is_local(reference: str) -> bool:
    return os.path.isdir(reference)


def load_tokenizer(source: str, *, key: str = "model.path", cache_dir: str | None = None):
    """AutoTokenizer for `source`, refused if it turns a Spanish probe into unknown tokens."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        if is_local(source):
            raise ConfigError(key, f"no usable tokenizer in {source}: {err}") from err
        raise hub_failure(key, source, err) from err
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
        if is_local(source):
            raise ConfigError(key, f"{source} holds no usable model config: {err}") from err
        raise hub_failure(key, source, err) from err
