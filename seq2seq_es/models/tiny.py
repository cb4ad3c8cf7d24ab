"""Tiny twins of the zoo's models: same architecture classes, random weights, own tokenizers.

Each `-tiny` model is a checkpoint folder built offline in a few seconds from the shipped corpus
(`tiny_corpus.txt`: Spanish, some Portuguese and English, for the translation tasks):

- barto: BartForConditionalGeneration + byte-level BPE (<s>=0, <pad>=1, </s>=2, <unk>=3, like BARTO)
- ledo: the tiny BART turned into an LED by `convert_bart_to_led` (how LEDO was made from BARTO),
  with 4096 encoder positions and a 16-token attention window
- t5s: T5 v1.1-style (gated GELU, untied head) + sentencepiece unigram with 100 sentinels
  (<pad>=0, </s>=1, <unk>=2, like T5S)
- beto / mbert: BertForMaskedLM + cased WordPiece ([PAD]=1 like BETO; [PAD]=0, [UNK]=100,
  [CLS]=101, [SEP]=102 like mBERT); roberta: RobertaForMaskedLM + byte-level BPE.
  The bert2bert twins load these the way the real pairs load BETO: encoder and decoder
  from the same "pretrained" folder, with seeded cross-attention.

Tokenizers are saved through the same classes AutoTokenizer picks for the real checkpoints
(BartTokenizer, T5Tokenizer, BertTokenizer, RobertaTokenizer), so the tiny twins exercise the
real loading path. In transformers 5 those classes rebuild their pipeline from the vocabulary:
BertTokenizer lowercases and strips accents unless told `do_lower_case=False`, and T5Tokenizer
drops sentencepiece's byte fallback (characters outside the vocabulary become <unk>).

Folders live under `$SEQ2SEQ_ES_CACHE/tiny` (default `~/.cache/seq2seq_es/tiny`), named after a
hash of this code, the corpus and the library versions, so an edit rebuilds them. A build goes to
a temporary folder that is renamed into place: processes building at once (two ranks of a test)
never see a half-written folder, and all use the one that won. Weights are seeded, so separate
caches (two nodes) hold identical models.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import Seq2SeqEsError
from .registry import ModelSpec, get_model_spec

TINY_SEED = 20240917
CORPUS_PATH = Path(__file__).with_name("tiny_corpus.txt")
COMPLETE_MARKER = "TINY_BUILD_COMPLETE"

# Sizes shared by every tiny twin.
HIDDEN = 64
LAYERS = 2
HEADS = 4
FFN = 128
BPE_VOCAB = 1500
WORDPIECE_VOCAB = 1500
UNIGRAM_VOCAB = 1000          # before the 100 sentinels; a soft target (hard_vocab_limit off)
LED_POSITIONS = 4096
LED_WINDOW = 16

# Registry base name -> checkpoint folder stem (the shared and unshared pairs use one encoder).
_CHECKPOINT_OF = {
    "barto": "barto", "ledo": "ledo", "t5s": "t5s",
    "beto2beto": "beto", "betoshare": "beto",
    "roberta2roberta": "roberta", "robertashare": "roberta",
    "mbert2mbert": "mbert", "mbertshare": "mbert",
}


def cache_root() -> Path:
    base = os.environ.get("SEQ2SEQ_ES_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "seq2seq_es"
    return root / "tiny"


def corpus_lines() -> list[str]:
    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    return [line for line in (raw.strip() for raw in lines) if line]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence load reports and progress bars while building or loading a tiny twin."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def seeded(seed: int = TINY_SEED) -> Iterator[None]:
    """Deterministic initialisation without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------
# Tokenizers


def _train_byte_level_bpe(lines: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<mask>"] = len(vocab)            # last, as in BART and RoBERTa
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def _save_byte_level_tokenizer(folder: Path, max_length: int) -> None:
    from transformers import RobertaTokenizer  # BartTokenizer is an alias of it in transformers 5

    vocab, merges = _train_byte_level_bpe(corpus_lines())
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, add_prefix_space=False,
                                 model_max_length=max_length)
    tokenizer.save_pretrained(folder)


def _save_sentencepiece_tokenizer(folder: Path, max_length: int) -> None:
    import sentencepiece
    from transformers import T5Tokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type="unigram",
        vocab_size=UNIGRAM_VOCAB, hard_vocab_limit=False, byte_fallback=True,
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        minloglevel=2, split_digits=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(str(folder), extra_ids=100, model_max_length=max_length)
    tokenizer.save_pretrained(folder)


def _wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    """A cased WordPiece vocabulary: `specials` first, then each BPE piece as word start and as
    "##" continuation.

    tokenizers' WordPieceTrainer numbers its "##" pieces in hash-map order, so its vocabulary
    (ids and even the piece set) changes from one process to the next; plain BPE training is
    deterministic, and WordPiece's greedy longest-match encoding needs only the piece set.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bpe.train_from_iterator(corpus_lines(), trainers.BpeTrainer(vocab_size=WORDPIECE_VOCAB // 2,
                                                                show_progress=False))
    pieces = [piece for piece, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])]
    ordered = specials + pieces + ["##" + piece for piece in pieces]
    if len(set(ordered)) != len(ordered):
        raise RuntimeError("tiny WordPiece vocabulary has duplicate pieces")
    return {piece: index for index, piece in enumerate(ordered)}


def _save_wordpiece_tokenizer(folder: Path, specials: list[str]) -> None:
    """Cased like BETO and mBERT; `specials` fixes the first ids ([unused*] fill mBERT's)."""
    from transformers import BertTokenizer

    BertTokenizer(vocab=_wordpiece_vocab(specials), do_lower_case=False,
                  model_max_length=512).save_pretrained(folder)


_BETO_SPECIALS = ["[MASK]", "[PAD]", "[UNK]", "[CLS]", "[SEP]"]
_MBERT_SPECIALS = (["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)]
                   + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"])


# ---------------------------------------------------------------------------------------------
# Models


def _tokenizer_in(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _build_barto(folder: Path) -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    _save_byte_level_tokenizer(folder, max_length=1024)
    tokenizer = _tokenizer_in(folder)
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None)
    BartForConditionalGeneration(config).save_pretrained(folder)


def _build_ledo(folder: Path) -> None:
    from .convert_led import convert_bart_to_led

    barto = ensure_tiny_checkpoint("barto-tiny")
    convert_bart_to_led(str(barto), str(folder), max_positions=LED_POSITIONS,
                        attention_window=LED_WINDOW)


def _build_t5s(folder: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    _save_sentencepiece_tokenizer(folder, max_length=4096)   # the t5s position cap
    tokenizer = _tokenizer_in(folder)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN,
        num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=HEADS,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id)
    model = T5ForConditionalGeneration(config)
    # T5S (v1.1) has its own LM head. transformers 5 ties it to the embeddings for any model built
    # from a config, and keeps two saved weights apart only when their values differ: give the
    # head its own, smaller, initialisation (which also starts the loss near ln(vocab)).
    head = torch.empty_like(model.lm_head.weight)
    torch.nn.init.normal_(head, std=HIDDEN ** -0.5 * 0.1)
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(folder)


def _build_bert(folder: Path, specials: list[str]) -> None:
    from transformers import BertConfig, BertForMaskedLM

    _save_wordpiece_tokenizer(folder, specials)
    tokenizer = _tokenizer_in(folder)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(folder)


def _build_roberta(folder: Path) -> None:
    from transformers import RobertaConfig, RobertaForMaskedLM

    _save_byte_level_tokenizer(folder, max_length=512)
    tokenizer = _tokenizer_in(folder)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=514,
        type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    RobertaForMaskedLM(config).save_pretrained(folder)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "barto": _build_barto,
    "ledo": _build_ledo,
    "t5s": _build_t5s,
    "beto": lambda folder: _build_bert(folder, _BETO_SPECIALS),
    "mbert": lambda folder: _build_bert(folder, _MBERT_SPECIALS),
    "roberta": _build_roberta,
}


# ---------------------------------------------------------------------------------------------
# Cache


@functools.lru_cache(maxsize=1)
def _build_digest() -> str:
    """Changes whenever the code, corpus or libraries that shape a tiny checkpoint change."""
    import sentencepiece
    import tokenizers
    import transformers

    digest = hashlib.sha256()
    here = Path(__file__).parent
    for source in (here / "tiny.py", here / "convert_led.py", CORPUS_PATH):
        digest.update(source.read_bytes())
    for version in (torch.__version__, transformers.__version__, tokenizers.__version__,
                    sentencepiece.__version__):
        digest.update(version.encode())
    return digest.hexdigest()[:12]


def tiny_checkpoint_dir(name: str | ModelSpec) -> Path:
    """Where the tiny checkpoint for `name` lives (built or not)."""
    spec = get_model_spec(name)
    if not spec.tiny:
        raise ValueError(f"model '{spec.name}' is not a tiny twin")
    return cache_root() / f"{_CHECKPOINT_OF[spec.base_name]}-{_build_digest()}"


def _holds_a_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _wait_for_build(final: Path, timeout_s: float = 600.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while not (final / COMPLETE_MARKER).is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no other process finished building the tiny model {final} "
                               f"within {timeout_s:.0f} s (this rank cannot write it)")
        time.sleep(0.2)
    return final


def _readable_as_its_files(staging: Path) -> None:
    """The folder and its weights as readable as its config.json (0755 and 0644 under the usual
    umask): mkdtemp makes the folder 0700 and transformers writes the weights 0600, so a cache
    shared by several users (SEQ2SEQ_ES_CACHE) held models only their builder could read."""
    from .file_modes import readable_as_config

    readable_as_config(staging)
    if (staging / "config.json").is_file():
        mode = (staging / "config.json").stat().st_mode & 0o777
        os.chmod(staging, mode | (mode & 0o444) >> 2)  # a folder is entered where it is read


def ensure_tiny_checkpoint(name: str | ModelSpec) -> Path:
    """Build the tiny checkpoint folder for `name` once (atomically) and return it."""
    final = tiny_checkpoint_dir(name)
    if (final / COMPLETE_MARKER).is_file():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as exc:  # a read-only or full home: one line naming the way out
        raise Seq2SeqEsError(f"the -tiny models are built in {final.parent}, which could not "
                             f"be written ({exc.strerror or exc}); set SEQ2SEQ_ES_CACHE to a "
                             "writable folder") from exc
    try:
        with quiet_transformers(), seeded():
            _BUILDERS[final.name.rsplit("-", 1)[0]](staging)
        if not _holds_a_model(staging):
            # transformers 5's save_pretrained writes nothing on a rank other than 0 once
            # torch.distributed is up: this rank's build is empty, so it waits for rank 0's
            # instead of renaming an incomplete folder into place (which every later load
            # would then fail on).
            return _wait_for_build(final)
        (staging / COMPLETE_MARKER).write_text(f"seed {TINY_SEED}\n", encoding="utf-8")
        _readable_as_its_files(staging)
        try:
            os.rename(staging, final)
        except OSError:
            # Another process renamed its build into place first; use that one.
            if not (final / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
