"""Spanish-aware text handling shared by the metrics: tokens, stems, sentences, n-grams.

The paper's scripts scored Spanish with English tooling: rouge_score keeps only ``[a-z0-9]``,
so "canción" became the two tokens "canci" and "n", and sentences were split with English punkt.
Everything here is built for Spanish instead:

- Text is put in Unicode NFC first, so a precomposed "ó" and "o" + combining accent are the
  same character and never split a word.
- Word tokens are runs of Unicode word characters (``\\w+`` of the ``regex`` package: letters of
  any script, combining marks, digits, underscore), lowercased. "¿Qué" gives "qué", "canción"
  stays one token. A tag written like ``<SPLIT>`` is kept as one token ("<split>") so that the
  split-and-rephrase marker counts as a single ordinary token; "_SPLIT_" is one ``\\w+`` token.
- Stems come from the Snowball Spanish stemmer, which also strips acute accents
  ("canción" and "canciones" both give "cancion").
- Sentences are split on . ! ? … and line breaks, knowing that Spanish opens questions and
  exclamations with ¿ and ¡, and not splitting after common abbreviations ("Sr.", "Dra.",
  "EE.UU.", "p. ej.") or inside numbers ("3.5").
"""

from __future__ import annotations

import threading
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import regex
import snowballstemmer

_WORD_TOKEN = regex.compile(r"<\w+>|\w+")
_WORD_OR_PUNCT_TOKEN = regex.compile(r"<\w+>|\w+|[^\w\s]")
_WHITESPACE_RUN = regex.compile(r"\s+")


def normalize_unicode(text: str) -> str:
    """NFC-normalise, so that composed and decomposed accents compare equal."""
    return unicodedata.normalize("NFC", text)


def normalize_texts(texts):
    """`normalize_unicode` over strings, or over lists of strings (several references)."""
    return [normalize_unicode(text) if isinstance(text, str)
            else [normalize_unicode(item) for item in text] for text in texts]


def word_tokens(text: str) -> list[str]:
    """Lowercased Unicode word tokens; punctuation (including ¿ ¡) is dropped."""
    return _WORD_TOKEN.findall(normalize_unicode(text).lower())


def word_and_punct_tokens(text: str) -> list[str]:
    """Lowercased word tokens plus each punctuation mark as its own token.

    Used where punctuation is part of what is being judged, as in SARI for
    split-and-rephrase, where adding a full stop between the new sentences is an edit.
    """
    return _WORD_OR_PUNCT_TOKEN.findall(normalize_unicode(text).lower())


def normalize_whitespace(text: str) -> str:
    """Strip the ends and collapse every run of whitespace (newlines, tabs) to one space."""
    return _WHITESPACE_RUN.sub(" ", normalize_unicode(text)).strip()


_STEMMER = snowballstemmer.stemmer("spanish")
# The Snowball stemmer object keeps the word being stemmed as internal state.
_STEMMER_LOCK = threading.Lock()


@lru_cache(maxsize=200_000)
def spanish_stem(token: str) -> str:
    """Snowball Spanish stem of a lowercased token (accents removed by the stemmer)."""
    with _STEMMER_LOCK:
        return _STEMMER.stemWord(token)


def ngram_counts(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts of the contiguous n-grams of ``tokens`` (empty when there are fewer than n)."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


# Lowercase, without the final dot. Kept short and unambiguous: "etc." is left out on purpose
# because it usually ends the sentence it closes ("... pan, leche, etc. Luego se fue.").
SPANISH_ABBREVIATIONS = frozenset({
    "sr", "sra", "srta", "sres", "sras", "srs", "d", "dña", "dr", "dra", "dres", "dras",
    "lic", "ldo", "lda", "ing", "arq", "prof", "profa", "mons", "gral", "cnel", "cap", "tte",
    "sto", "sta", "ud", "uds", "vd", "vds", "av", "avda", "c", "pza", "pl", "núm", "nº",
    "art", "arts", "pág", "págs", "p", "pp", "fig", "figs", "vol", "vols", "ed", "eds", "ej",
    "aprox", "tel", "tfno", "cía", "dpto", "depto", "admón", "apdo", "izq", "dcha", "máx",
    "mín", "cf", "vs", "op", "cit", "ibíd",
})
# "EE.UU.", "S.A.", "a.m.", "p.ej.": two or more short dotted pieces.
_DOTTED_ABBREVIATION = regex.compile(r"^(?:\p{L}{1,3}\.){2,}$")
# A single capital initial: "J. R. R. Tolkien".
_INITIAL = regex.compile(r"^\p{Lu}\.$")
# The raya (—) opens a line of dialogue: "—¿Vienes? —Sí, claro." is two sentences.
_OPENERS = "¿¡\"'«“‘([—"
_CLOSERS = "\"'»”’)]"
# A run of terminators (and closing quotes/brackets) that is followed either by whitespace and
# something that can start a sentence (capital, digit, opener), or directly by ¿ or ¡.
_BOUNDARY = regex.compile(
    r"[.!?…]+[" + regex.escape(_CLOSERS) + r"]*"
    r"(?=\s+[" + regex.escape(_OPENERS) + r"\p{Lu}\p{N}]|[¿¡])"
)
_LAST_CHUNK = regex.compile(r"\S+$")


def _ends_with_abbreviation(text_before: str) -> bool:
    """Whether the whitespace-delimited chunk ending ``text_before`` (with its dot) is an abbreviation."""
    found = _LAST_CHUNK.search(text_before)
    if found is None:
        return False
    chunk = found.group().lstrip(_OPENERS)
    if _DOTTED_ABBREVIATION.match(chunk) or _INITIAL.match(chunk):
        return True
    return chunk[:-1].lower() in SPANISH_ABBREVIATIONS


def _split_line(line: str) -> list[str]:
    sentences, start = [], 0
    for boundary in _BOUNDARY.finditer(line):
        terminators = boundary.group().rstrip(_CLOSERS)
        if terminators == "." and _ends_with_abbreviation(line[:boundary.start() + 1]):
            continue
        sentences.append(line[start:boundary.end()])
        start = boundary.end()
    sentences.append(line[start:])
    return [sentence.strip() for sentence in sentences if sentence.strip()]


def split_sentences(text: str) -> list[str]:
    """Split Spanish text into sentences (every line break is also a boundary).

    A boundary is a run of ``. ! ? …`` (optionally followed by closing quotes or brackets)
    followed by whitespace and a capital letter, digit, ``¿``, ``¡``, an opening quote or
    bracket, a dialogue dash (—), or directly by ``¿``/``¡`` ("¿Vienes?¡Claro!"). A single "."
    after a known abbreviation, a dotted abbreviation like "EE.UU." or a capital initial is not
    a boundary; a "." inside a number ("3.5") never is, since no space follows it.
    """
    sentences = []
    for line in normalize_unicode(text).splitlines():
        sentences.extend(_split_line(line))
    return sentences
