"""File modes of a saved model: its weights as readable as its config.json.

Imports nothing of the package: families (saving) and tiny (building) both use it, and
families imports tiny.
"""

from __future__ import annotations

import os
from pathlib import Path


def readable_as_config(folder: Path) -> None:
    """Give the weight files the mode of the folder's config.json (a new file's: 0644 under the
    usual umask 022). transformers 5 writes the weights through a temporary file of mode 0600
    and renames it: on a shared cluster, colleagues could read every file of final/ but its
    weights. (Read from a file, not by setting the umask, which is the whole process's.)"""
    config = folder / "config.json"
    if not config.is_file():
        return
    mode = config.stat().st_mode & 0o777
    for path in folder.glob("model*.safetensors*"):
        os.chmod(path, mode)
