"""Two of the paper scripts' faults that no other test would see come back: shell files with CRLF
line endings (bash reads `$'\r'` into every command and fails on a cluster node) and a
`nltk.download` at import time (no network on compute nodes; a download race between ranks)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import seq2seq_es

REPO = Path(seq2seq_es.__file__).resolve().parent.parent


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return [REPO / name for name in out.splitlines()]


def test_no_tracked_script_or_config_has_crlf_line_endings():
    files = _tracked("*.sh", "*.py", "*.yaml", "*.json", "*.sbatch", ".ci/*")
    assert any(path.suffix == ".sh" for path in files)  # the listing found the shell files
    crlf = [str(path.relative_to(REPO)) for path in files
            if path.is_file() and b"\r\n" in path.read_bytes()]
    assert crlf == []


def test_the_package_downloads_no_nltk_data():
    """nltk is a reference in the tests only; the package's metrics carry their own Spanish
    tokenisation, so nothing may call nltk.download or look up nltk.data resources."""
    calls = []
    for path in sorted((REPO / "seq2seq_es").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("download", "data") \
                    and isinstance(node.value, ast.Name) and node.value.id == "nltk":
                calls.append(f"{path.relative_to(REPO)}:{node.lineno} nltk.{node.attr}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names]
                module = getattr(node, "module", None) or ""
                if module.startswith("nltk") or any(name.startswith("nltk") for name in names):
                    calls.append(f"{path.relative_to(REPO)}:{node.lineno} imports nltk")
    assert calls == []
