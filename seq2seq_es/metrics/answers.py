"""Answer normalisation conventions for exact match and token F1, by name.

Published QA numbers are computed after normalising both answers, and the conventions differ:

- ``squad``: the SQuAD v1.1 evaluation script: lowercase, drop ASCII punctuation
  (`string.punctuation`, so ¿ ¡ « » and other non-ASCII marks stay), drop the English articles
  a/an/the as whole words, collapse whitespace. Tokens for F1: whitespace-separated.
- ``mlqa-es``: the MLQA evaluation script with lang=es: lowercase, drop every Unicode
  punctuation character (category P*) and ASCII punctuation, drop the Spanish articles
  un/una/unos/unas/el/la/los/las as whole words, collapse whitespace. Tokens: whitespace.
- ``strict``: no normalisation beyond Unicode NFC and whitespace (case, accents, punctuation
  and articles all count): "Madrid." and "Madrid" differ.
- ``loose`` (exact match only): Hugging Face evaluate's `exact_match` with `ignore_case`,
  `ignore_punctuation` and `ignore_numbers` on stripped texts, as the paper's split-and-rephrase
  script scored BiSECT: strip, lowercase, then ASCII punctuation (`string.punctuation`: ¿ ¡ « »
  stay) and the digits 0-9 dropped; inner whitespace is compared as it is, also what dropped
  characters leave ("a, b" is not "a , b"). "5 frases." equals "3 Frases" under it.
- ``words`` (token F1 only): lowercased Unicode word tokens (`text.word_tokens`), no article
  removal; the package's dialogue F1.
- ``whitespace-membership`` (token F1 only): the paper's dialogue script (`run_dialogue.py`'s
  `compute_f1_score`): whitespace tokens with case and attached punctuation kept ("Hola," and
  "hola" differ), and a token counts, each time it occurs, when the other side holds it at all
  (no clipping: "sí sí sí" against "sí" has precision 1). `token_f1` applies that counting.

None of them folds accents: "cancion" never equals "canción". Articles are removed after
punctuation, in both scripts' order, so "¡El gato!" -> "gato" under mlqa-es.
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from functools import lru_cache

from seq2seq_es.metrics.text import normalize_whitespace, word_tokens

CONVENTIONS = ("strict", "squad", "mlqa-es", "loose")
F1_CONVENTIONS = ("words", "squad", "mlqa-es", "whitespace-membership")

_ASCII_PUNCTUATION = frozenset(string.punctuation)
_ASCII_PUNCTUATION_AND_DIGITS = _ASCII_PUNCTUATION | frozenset(string.digits)


@lru_cache(maxsize=1)
def unicode_punctuation() -> frozenset[str]:
    """Every code point whose Unicode category is punctuation (Pc Pd Pe Pf Pi Po Ps), plus
    ASCII's symbols that are not Unicode punctuation ($ + < = > ^ ` | ~), as the MLQA script
    counts them. Built on first use (a scan of all code points: ~0.1 s)."""
    return frozenset(chr(code) for code in range(sys.maxunicode)
                     if unicodedata.category(chr(code)).startswith("P")) | _ASCII_PUNCTUATION
_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPANISH_ARTICLES = re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b")


def _drop(text: str, characters: frozenset[str]) -> str:
    return "".join(ch for ch in text if ch not in characters)


def normalize_answer(text: str, convention: str) -> str:
    """The answer as the named convention compares it."""
    if convention == "strict":
        return normalize_whitespace(text)
    if convention == "loose":  # the script's strip, then evaluate's: case, punctuation, digits
        return _drop(text.strip().lower(), _ASCII_PUNCTUATION_AND_DIGITS)
    if convention == "squad":
        text = _ENGLISH_ARTICLES.sub(" ", _drop(text.lower(), _ASCII_PUNCTUATION))
    elif convention == "mlqa-es":
        text = _SPANISH_ARTICLES.sub(" ", _drop(text.lower(), unicode_punctuation()))
    else:
        raise ValueError(f"unknown answer convention {convention!r}; known: "
                         + ", ".join(CONVENTIONS))
    return " ".join(text.split())


def answer_tokens(text: str, convention: str) -> list[str]:
    """Tokens for token F1 under the named convention."""
    if convention == "words":
        return word_tokens(text.lower())
    if convention == "whitespace-membership":
        return text.split()
    if convention not in ("squad", "mlqa-es"):
        raise ValueError(f"unknown token F1 convention {convention!r}; known: "
                         + ", ".join(F1_CONVENTIONS))
    return normalize_answer(text, convention).split()
