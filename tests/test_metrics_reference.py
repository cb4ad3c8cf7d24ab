"""Our metric code against the reference implementations, on hard Spanish inputs.

Where the reference is installed (rouge_score, sacreBLEU, nltk's METEOR) the expected value is
computed here from it. Where it is a script that is not installed (MLQA's
mlqa_evaluation_v1.py, SQuAD v1.1's evaluate script, Hugging Face evaluate's `sari` and
`exact_match` hub scripts, the paper's run_dialogue.py F1) the expected values were computed
with that script once and each one is explained by hand in a comment, so a reader can check it
without running anything.
"""

from __future__ import annotations

import random
import unicodedata

import pytest
import sacrebleu
from nltk_meteor import nltk_single_meteor
from rouge_score import rouge_scorer

from seq2seq_es.metrics import compute_metrics
from seq2seq_es.metrics.meteor import sentence_meteor
from seq2seq_es.metrics.rouge import ROUGE_TYPES, spanish_tokenizer
from seq2seq_es.metrics.scoring import METRIC_FUNCTIONS
from seq2seq_es.metrics.text import split_sentences, word_tokens


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


# --- exact match and token F1: MLQA (lang=es) and SQuAD v1.1 ---------------------------------
#
# MLQA es: lowercase, drop every Unicode P* character and string.punctuation, then the words
# un/una/unos/unas/el/la/los/las (re's \b, after punctuation is gone), then split on whitespace.
# SQuAD v1.1: lowercase, drop string.punctuation only (¿ ¡ « » — stay), then a/an/the.
# F1 is the clipped bag-of-tokens F1 of those tokens, 0 when nothing overlaps; EM compares the
# normalised strings (two empty strings are equal). Several references: the best one.
QA_REFERENCE_CASES = [
    # (prediction, references, MLQA EM, MLQA F1, SQuAD EM, SQuAD F1)
    # mlqa: "niño" both. squad: "¡el niño" vs "el niño": 1 common of 2 and 2 -> F1 50.
    ("¡El Niño!", ["el niño"], 100, 100, 0, 50),
    # mlqa: "unos" is an article. squad: 2 common, P 2/3, R 1 -> 80.
    ("unos 3800 metros", ["3800 metros"], 100, 100, 0, 80),
    # mlqa: « » are P*, "los" an article. squad: "«los" "ángeles»" share no token with "ángeles".
    ("«Los Ángeles»", ["ángeles"], 100, 100, 0, 0),
    # "él" (accented) is not the article "el": "él" vs "" in mlqa, "él" vs "el" in squad.
    ("Él", ["el"], 0, 0, 0, 0),
    # "del" is no article: mlqa "del prado" vs "prado", P 1/2, R 1 -> 2/3; squad: "el" kept,
    # "del prado" vs "el prado": 1 common of 2 and 2 -> 50.
    ("del Prado", ["el Prado"], 0, 100 * 2 / 3, 0, 50),
    # The decimal comma is punctuation in both: "35 km" both sides.
    ("3,5 km", ["35 km"], 100, 100, 100, 100),
    # The hyphen goes before articles are looked for: "el-la" becomes "ella", not an article.
    ("el-la", ["ella"], 100, 100, 100, 100),
    # mlqa: both sides become "" (EM 100, F1 0: no tokens); squad: "la" vs "el".
    ("la", ["el"], 100, 0, 0, 0),
    ("PINGÜINO", ["pingüino"], 100, 100, 100, 100),   # lowercase, ü kept
    ("pinguino", ["pingüino"], 0, 0, 0, 0),           # accents (diaeresis) never folded
    # Best reference: mlqa "onu" = "onu" (dots dropped); squad "la onu" vs "onu": P 1/2, R 1.
    ("la ONU", ["Naciones Unidas", "O.N.U."], 100, 100, 0, 100 * 2 / 3),
    ("", ["algo"], 0, 0, 0, 0),                       # empty prediction
    ("   ", [""], 100, 0, 100, 0),                    # whitespace-only vs empty: "" == ""
    # Clipping: "gato gato" vs "gato": 1 common, P 1/2, R 1 -> 2/3 (mlqa); squad keeps
    # "el": 1 common of 4 and 1 -> 2 * (1/4) / (5/4) = 40.
    ("el gato el gato", ["gato"], 0, 100 * 2 / 3, 0, 40),
    # The em dash is dropped, joining "19361939" (mlqa); squad keeps it: "1936—1939".
    ("1936—1939", ["1936 1939"], 0, 0, 0, 0),
    ("Hola\u00a0mundo", ["hola mundo"], 100, 100, 100, 100),  # NBSP is whitespace to split()
    # mlqa: « ¿ ? » all P*; squad drops only "?": "«¿qué»" vs "qué".
    ("«¿Qué?»", ["qué"], 100, 100, 0, 0),
    # English articles: mlqa keeps "the" (P 1/2, R 1), squad drops it.
    ("The cat", ["cat"], 0, 100 * 2 / 3, 100, 100),
    # "$" is no Unicode P* but string.punctuation, which the MLQA script adds to its set.
    ("$100", ["100"], 100, 100, 100, 100),
    # The MLQA script reads every code point, past the BMP (U+10100 is Po).
    ("Madrid\U00010100", ["Madrid"], 100, 100, 0, 0),
    # SQuAD drops an article only as a whole word: "ala" keeps its "a"; "la" is mlqa's article.
    ("ala", ["la"], 0, 0, 0, 0),
]


@pytest.mark.parametrize("prediction, references, mlqa_em, mlqa_f1, squad_em, squad_f1",
                         QA_REFERENCE_CASES)
def test_qa_conventions_equal_the_mlqa_and_squad_scripts(prediction, references, mlqa_em,
                                                         mlqa_f1, squad_em, squad_f1):
    for convention, em, f1 in (("mlqa-es", mlqa_em, mlqa_f1), ("squad", squad_em, squad_f1)):
        options = {"exact_match": {"convention": convention},
                   "token_f1": {"convention": convention}}
        scores = compute_metrics(["exact_match", "token_f1"], [prediction], [references],
                                 options=options)
        assert scores["exact_match"] == em, (convention, prediction, references)
        assert scores["token_f1"] == pytest.approx(f1, abs=1e-9), (convention, prediction)


def test_mlqa_es_corpus_scores_are_the_scripts_means_over_examples():
    # The script sums each question's best-reference EM and F1 and divides by the count.
    predictions = [case[0] for case in QA_REFERENCE_CASES]
    references = [case[1] for case in QA_REFERENCE_CASES]
    options = {"exact_match": {"convention": "mlqa-es"}, "token_f1": {"convention": "mlqa-es"}}
    scores = compute_metrics(["exact_match", "token_f1"], predictions, references,
                             options=options)
    count = len(QA_REFERENCE_CASES)
    assert scores["exact_match"] == pytest.approx(sum(c[2] for c in QA_REFERENCE_CASES) / count)
    assert scores["token_f1"] == pytest.approx(sum(c[3] for c in QA_REFERENCE_CASES) / count)


# The paper's BiSECT exact match: run_simplification.py strips both texts, then evaluate's
# exact_match(ignore_case=True, ignore_punctuation=True, ignore_numbers=True): np.char.lower,
# then string.punctuation and string.digits deleted; inner whitespace compared as it is.
LOOSE_REFERENCE_CASES = [
    ("«Hola», dijo.", "«hola» dijo", 100),   # « » stay, "," and "." go
    ("¡Ya!", "ya", 0),                       # ¡ is not ASCII punctuation
    ("Pagó 3,5 €.", "pagó  €", 100),         # "3,5" leaves nothing: two spaces, as the reference
    ("Pagó 3,5 €.", "pagó €", 0),            # ... so one space differs
    ("ÁRBOL", "árbol", 100),                 # lowercase of accented capitals
    ("arbol", "árbol", 0),                   # accents count
    ("Uno.\nDos.", "uno\ndos", 100),         # a newline is compared as it is
    ("Uno.\nDos.", "uno dos", 0),
    ("  x  ", "X", 100),                     # the script's strip()
    ("", "1.", 100),                         # digits and punctuation only: "" both
    ("Hola .", "hola", 0),                   # stripped before, not after, the deletions:
    ("Llegaron 3", "llegaron", 0),           # "hola " and "llegaron " keep their space
]


@pytest.mark.parametrize("prediction, reference, expected", LOOSE_REFERENCE_CASES)
def test_loose_exact_match_equals_evaluates_exact_match_after_the_papers_strip(
        prediction, reference, expected):
    scores = compute_metrics(["exact_match"], [prediction], [reference],
                             options={"exact_match": {"convention": "loose"}})
    assert scores["exact_match"] == expected


def test_whitespace_membership_f1_equals_the_papers_dialogue_script():
    # run_dialogue.py compute_f1_score: whitespace tokens, a token counts when the other side
    # holds it at all; P = preds in label / len(pred), R = labels in pred / len(label).
    def f1(prediction, reference):
        return compute_metrics(["token_f1"], [prediction], [reference],
                               options={"token_f1": {"convention": "whitespace-membership"}}
                               )["token_f1"]

    assert f1("Sí, claro", "sí claro") == pytest.approx(50.0)       # P 1/2, R 1/2
    assert f1("no no no", "no sé") == pytest.approx(100 * 2 / 3)    # P 3/3, R 1/2
    assert f1("¿Qué? ¿Qué?", "¿Qué?") == 100.0                      # P 2/2, R 1/1: no clipping
    assert f1("Canción", "canción") == 0.0                          # case kept
    assert f1(nfd("canción"), "canción") == 100.0                   # but one Unicode form
    # recall counts each reference token, repeats too: P 1/1, R 2/3
    assert f1("no", "no no sé") == pytest.approx(80.0)


# --- SARI against evaluate's sari --------------------------------------------------------------
#
# Values of Hugging Face evaluate's sari (metrics/sari/sari.py: SARIsent over lowercased text
# tokenized by sacreBLEU's 13a and split at single spaces), computed with that script. 13a
# separates ASCII punctuation only: "¿vienes" and "«" stay glued to their words, "3,5" stays
# one token (a comma between digits), "<SPLIT>" becomes "< split >". An empty text is the one
# token "" there, which paper mode keeps.
SARI_REFERENCE_CASES = [
    ("Pagó 3,5 euros, dijo.", "Pagó 3.5 euros. <SPLIT> Lo dijo.",
     ["Pagó 3,5 euros. <SPLIT> Lo dijo."], 69.99338624338624),
    ("«¿Vienes?», preguntó Ana.", "«¿Vienes?» <SPLIT> Preguntó Ana.",
     ["Ana preguntó. <SPLIT> «¿Vienes?»", "«¿Vienes?», preguntó. <SPLIT> Fue Ana."],
     48.89285714285714),
    # Empty prediction, the one token "": keep F1 0 at every order (nothing kept, the reference
    # keeps all); delete precision 0 (every deletion is one the reference did not make); add:
    # at n = 1 "" is an added unigram the reference lacks (P 0, F1 0), at n = 2..4 nothing is
    # added or to add (0/0 = 1, F1 1). SARI = (0 + 0 + 3/4) / 3 = 25.
    ("El gato come.", "", ["El gato come."], 25.0),
    ("El gato come.", "   ", ["El gato come.", "Come el gato."], 11.11111111111111),
    ("EL NIÑO LLEGÓ TARDE", "el niño llegó", ["El niño llegó."], 66.66666666666666),
    ("", "Algo nuevo.", ["Algo nuevo."], 100.0),
]


@pytest.mark.parametrize("source, prediction, references, expected", SARI_REFERENCE_CASES)
def test_paper_sari_equals_evaluates_sari_on_hard_spanish_inputs(source, prediction,
                                                                 references, expected):
    scores = compute_metrics(["sari"], [prediction], [references], sources=[source],
                             mode="paper")
    assert scores["sari"] == pytest.approx(expected, abs=1e-9)
    # Typed with combining accents, the texts score as the composed ones.
    scores = compute_metrics(["sari"], [nfd(prediction)], [[nfd(r) for r in references]],
                             sources=[nfd(source)], mode="paper")
    assert scores["sari"] == pytest.approx(expected, abs=1e-9)


def test_paper_sari_over_examples_with_different_reference_counts_is_the_mean():
    sources, predictions, references, values = zip(*SARI_REFERENCE_CASES)
    scores = compute_metrics(["sari"], list(predictions), list(references),
                             sources=list(sources), mode="paper")
    assert scores["sari"] == pytest.approx(sum(values) / len(values), abs=1e-9)


def test_spanish_sari_is_evaluates_algorithm_on_spanish_tokens():
    # Spanish mode = the same algorithm on lowercased Unicode words and single punctuation
    # marks. On text already split that way, 13a changes nothing, so evaluate's sari of the
    # split text (75.35103785103784, computed with the script) is spanish mode's value for the
    # raw text; paper mode on the raw text keeps "¿qué" whole and differs (74.97276688453160).
    raw = ("¿Qué pasó en Madrid, dijo el alcalde?", "¿Qué pasó en Madrid? El alcalde lo dijo.",
           ["¿Qué pasó en Madrid? Lo dijo el alcalde.", "El alcalde dijo: ¿qué pasó en Madrid?"])
    split = ("¿ qué pasó en madrid , dijo el alcalde ?",
             "¿ qué pasó en madrid ? el alcalde lo dijo .",
             ["¿ qué pasó en madrid ? lo dijo el alcalde .",
              "el alcalde dijo : ¿ qué pasó en madrid ?"])
    for source, prediction, references in (raw, split):
        spanish = compute_metrics(["sari"], [prediction], [references], sources=[source])
        assert spanish["sari"] == pytest.approx(75.35103785103784, abs=1e-9)
    paper_split = compute_metrics(["sari"], [split[1]], [split[2]], sources=[split[0]],
                                  mode="paper")
    assert paper_split["sari"] == pytest.approx(75.35103785103784, abs=1e-9)
    paper_raw = compute_metrics(["sari"], [raw[1]], [raw[2]], sources=[raw[0]], mode="paper")
    assert paper_raw["sari"] == pytest.approx(74.9727668845316, abs=1e-9)


# --- ROUGE against rouge_score ----------------------------------------------------------------

HARD_SUMMARIES = [
    # (prediction, references)
    ("¿Qué pasó? ¡El Real Madrid ganó la final!", ["El Real Madrid ganó la final."]),
    ("La canción «Despacito» batió récords.\nEl público celebró.",
     ["«Despacito» batió todos los récords.\nMiles de personas la celebraron.",
      "La canción batió récords."]),
    ("EL PINGÜINO NIÑO COMIÓ 3,5 KILOS.", ["El niño pingüino comió 3,5 kilos."]),
    ("", ["Algo pasó en Sevilla."]),                               # empty prediction
    ("   \n  ", ["Algo pasó."]),                                   # whitespace only
    ("Algo pasó en Sevilla.", [""]),                               # empty reference
    ("¿?¡!", ["«»"]),                                              # punctuation only
    ("El Sr. García llegó a EE.UU. ayer. Dijo: «Basta».\n\nLuego se fue.",
     ["Ayer llegó el Sr. García a EE.UU.\nDijo basta y se fue."]),
    ("Él sí sabe qué más dé. Publicó canciones.", ["El si sabe que mas de. Público canción."]),
    # Best reference by F-measure, not recall: the short one is all recalled (R 1, F 0.4).
    ("El gobierno aprobó ayer la reforma de las pensiones.",
     ["El gobierno aprobó la reforma de las pensiones ayer en el Congreso con sus socios.",
      "La reforma."]),
]


def _long_text(rng: random.Random, words: int) -> str:
    vocabulary = ("el la de que en los se del las un por con no una su para es al lo como más "
                  "pero sus le ya o este sí porque esta cuando muy sin sobre también me hasta "
                  "canción niño año pingüino él qué . . , ¿ ? ¡ ! « » \n").split(" ")
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def _hard_summaries_with_long_ones():
    rng = random.Random(7)
    return HARD_SUMMARIES + [(_long_text(rng, 300), [_long_text(rng, 340)])]


def _rouge_score_mean(scorer, predictions, references, text=lambda t: t):
    per_example = [scorer.score_multi([text(r) for r in refs], text(prediction))
                   for prediction, refs in zip(predictions, references)]
    return {t: 100 * sum(s[t].fmeasure for s in per_example) / len(per_example)
            for t in ROUGE_TYPES}


@pytest.mark.parametrize("stem", [True, False])
def test_paper_rouge_equals_rouge_score_on_hard_spanish_inputs(stem):
    cases = _hard_summaries_with_long_ones()
    predictions = [p for p, _ in cases]
    references = [r for _, r in cases]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stem)
    expected = _rouge_score_mean(scorer, predictions, references)
    ours = compute_metrics(["rouge"], predictions, references, mode="paper",
                           options={"rouge": {"use_stemmer": stem}})
    assert ours == pytest.approx(expected, abs=1e-9)
    # The same texts typed with combining accents score as the composed ones (rouge_score on
    # NFD text would keep "o" of "ó" and split elsewhere: the package scores NFC).
    ours_nfd = compute_metrics(["rouge"], [nfd(p) for p in predictions],
                               [[nfd(r) for r in refs] for refs in references], mode="paper",
                               options={"rouge": {"use_stemmer": stem}})
    assert ours_nfd == pytest.approx(expected, abs=1e-9)


def test_paper_rouge_lsum_takes_newlines_as_given_and_resplits_on_request():
    cases = HARD_SUMMARIES
    predictions = [p for p, _ in cases]
    references = [r for _, r in cases]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    resplit = compute_metrics(["rouge"], predictions, references, mode="paper",
                              options={"rouge": {"split_sentences": True}})
    # rouge_score on the texts re-joined one sentence a line (what the paper's scripts did
    # with punkt, here with the Spanish splitter).
    expected = _rouge_score_mean(scorer, predictions, references,
                                 text=lambda t: "\n".join(split_sentences(t)))
    assert resplit == pytest.approx(expected, abs=1e-9)
    # Two sentences in swapped order on one line: as given, one "sentence" each side, so
    # ROUGE-Lsum is ROUGE-L; re-split, each sentence finds its whole match.
    prediction = "¿Quién ganó? El gobierno aprobó la ley."
    reference = "El gobierno aprobó la ley. ¿Quién ganó?"
    as_given = compute_metrics(["rouge"], [prediction], [reference], mode="paper")
    resplit = compute_metrics(["rouge"], [prediction], [reference], mode="paper",
                              options={"rouge": {"split_sentences": True}})
    assert as_given["rougeLsum"] == pytest.approx(as_given["rougeL"])
    assert as_given["rougeLsum"] < 100
    assert resplit["rougeLsum"] == pytest.approx(100.0)
    assert resplit["rougeL"] == pytest.approx(as_given["rougeL"], abs=1e-12)
    newlines = compute_metrics(["rouge"], ["¿Quién ganó?\nEl gobierno aprobó la ley."],
                               [reference.replace(". ", ".\n")], mode="paper")
    assert newlines["rougeLsum"] == pytest.approx(100.0)


class _SpanishTokens:
    """rouge_score's tokenizer interface over spanish mode's tokens."""

    def __init__(self, stem: bool):
        self.tokenize = spanish_tokenizer(stem)


@pytest.mark.parametrize("stem", [True, False])
def test_spanish_rouge_is_rouge_score_given_spanish_tokens_and_sentences(stem):
    # Spanish mode's ROUGE-N, LCS, summary-level union LCS with 1.5.5's clipping and best-of-
    # references, checked against rouge_score's own code given our tokens and one sentence a
    # line: empty and punctuation-only texts, ¿ ¡ « », abbreviations, newlines, a long text.
    cases = _hard_summaries_with_long_ones()
    predictions = [p for p, _ in cases]
    references = [r for _, r in cases]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_SpanishTokens(stem))
    expected = _rouge_score_mean(scorer, predictions, references,
                                 text=lambda t: "\n".join(split_sentences(t)))
    ours = compute_metrics(["rouge"], predictions, references,
                           options={"rouge": {"use_stemmer": stem}})
    assert ours == pytest.approx(expected, abs=1e-12)


def test_spanish_rouge_tokens_keep_spanish_words_whole():
    # What makes spanish mode differ from rouge_score's default on the same strings.
    assert word_tokens("¿Canción? ¡AÑO! «Pingüino»") == ["canción", "año", "pingüino"]
    assert word_tokens(nfd("canción")) == ["canción"]
    tokenize = spanish_tokenizer(True)
    # Words of more than 3 characters are stemmed (rouge_score's rule), so the accent still
    # tells "él" "sí" "qué" "más" from "el" "si" "que" "mas", where Snowball would fold it.
    assert tokenize("Él sí publicó qué más canciones") == ["él", "sí", "public", "qué", "más",
                                                           "cancion"]
    assert rouge_scorer.RougeScorer(["rouge1"]).score("canción", "canción")["rouge1"].fmeasure == 1
    # ... while paper mode's [a-z0-9] breaks "canción" into "canci" "n" and "año" into "a" "o":
    # "año" matches "a o" there, never in spanish mode.
    paper = compute_metrics(["rouge"], ["año"], ["a o"], mode="paper")
    spanish = compute_metrics(["rouge"], ["año"], ["a o"])
    assert paper["rouge1"] == 100.0 and spanish["rouge1"] == 0.0


# --- BLEU and chrF against sacreBLEU ------------------------------------------------------------

TRANSLATIONS = [
    ("¿Qué hora es? Son las 3,5 horas.", ["¿Qué hora es? Son las 3,5 horas."]),
    ("«El niño», dijo ÉL.", ["«El niño» -dijo él."]),
    ("", ["Una frase que nadie tradujo."]),
    ("El pingüino comió 1.000,5 kilos de pescado en Año Nuevo.",
     ["El pingüino se comió 1.000,5 kilos de pescado en Año Nuevo."]),
    ("   ", ["Nada."]),
    ("La canción ganó el premio del público.", ["La canción ganó el premio del público."]),
]


@pytest.mark.parametrize("tokenize", ["13a", "intl", "char", "none"])
def test_bleu_equals_sacrebleu_for_each_tokenizer(tokenize):
    predictions = [p for p, _ in TRANSLATIONS]
    references = [r[0] for _, r in TRANSLATIONS]
    expected = sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score
    ours = compute_metrics(["bleu"], predictions, references,
                           options={"bleu": {"tokenize": tokenize}})["bleu"]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-9)
    ours_nfd = compute_metrics(["bleu"], [nfd(p) for p in predictions],
                               [nfd(r) for r in references],
                               options={"bleu": {"tokenize": tokenize}})["bleu"]
    assert ours_nfd == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_bleu_default_tokenizer_is_13a_as_the_papers_sacrebleu():
    # 13a keeps "¿Qué" whole; intl splits "¿" off: the two give different numbers here, and the
    # default must be sacreBLEU's (what evaluate's sacrebleu and the hub cards used).
    predictions = ["¿Qué hora es ahora?", "¡Vamos ya!"]
    references = ["¿ Qué hora es ahora ?", "¡ Vamos ya !"]
    default = compute_metrics(["bleu"], predictions, references)["bleu"]
    assert default == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert default != pytest.approx(
        sacrebleu.corpus_bleu(predictions, [references], tokenize="intl").score)


def test_bleu_and_chrf_with_several_references_equal_sacrebleu():
    predictions = ["El niño llegó tarde a casa.", "¿Vienes mañana?", "Ganó 3,5 millones."]
    references = [["El niño llegó tarde a su casa.", "El chico llegó tarde a casa."],
                  ["¿Vendrás mañana?", "¿Vienes mañana o no?"],
                  ["Ganó 3,5 millones de euros.", "Se llevó 3,5 millones."]]
    streams = [list(stream) for stream in zip(*references)]
    scores = compute_metrics(["bleu", "chrf"], predictions, references)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, streams).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, streams).score)


@pytest.mark.parametrize("word_order", [0, 2])
def test_chrf_and_chrf_plus_plus_equal_sacrebleu_on_hard_inputs(word_order):
    from sacrebleu.metrics import CHRF

    predictions = [p for p, _ in TRANSLATIONS]
    references = [r[0] for _, r in TRANSLATIONS]
    expected = CHRF(word_order=word_order).corpus_score(predictions, [references]).score
    ours = compute_metrics(["chrf"], [nfd(p) for p in predictions], references,
                           options={"chrf": {"word_order": word_order}})["chrf"]
    assert ours == pytest.approx(expected, abs=1e-9)


# --- METEOR against nltk --------------------------------------------------------------------




def _nltk_meteor(prediction: str, references: list[str]) -> float:
    # nltk's single_meteor_score with our stemmer and no WordNet, on our tokens; the best
    # reference, as nltk's meteor_score.
    return 100 * max(nltk_single_meteor(word_tokens(reference), word_tokens(prediction))
                     for reference in references)


METEOR_CASES = [
    ("¿Las canciones nuevas GANARON premios?", ["¡La canción nueva ganó el premio!"]),
    ("«El pingüino» comió mucho", ["mucho comió el pingüino"]),
    ("Sí, mañana lloverá en Madrid.", ["mañana va a llover en madrid", "Sí, lloverá."]),
    ("Él llegó", ["el llegó"]),              # "él" and "el" meet at the stem stage only
    ("", ["algo"]),
    ("algo", [""]),
    ("Año", ["año"]),                        # one word: one chunk, penalty 0.5
]


@pytest.mark.parametrize("prediction, references", METEOR_CASES)
def test_meteor_equals_nltk_without_synonyms_where_no_word_or_stem_repeats(prediction,
                                                                           references):
    ours = compute_metrics(["meteor"], [prediction], [references])["meteor"]
    assert ours == pytest.approx(_nltk_meteor(prediction, references), abs=1e-6)
    assert compute_metrics(["meteor"], [nfd(prediction)], [references])["meteor"] == \
        pytest.approx(ours, abs=1e-12)


def test_meteor_with_a_repeated_stem_takes_fewest_crossings_where_nltk_links_right_to_left():
    # Documented divergence (docs/metrics.md, METEOR row), here from stems rather than words:
    # "ganaron" and "ganar" both stem to "gan", as "ganó" does. nltk links the last of them
    # ("ganar") to "ganó", crossing "la": 2 matches in 2 chunks, penalty 0.5 -> 28.57. Ours
    # links "ganaron", next to "la" on both sides: 1 chunk, penalty 0.5/8 -> 53.57.
    prediction = "comer sí ganaron la ganar más él años"
    reference = "premios ganó la"
    fmean = (2 / 8) * (2 / 3) / (0.9 * (2 / 8) + 0.1 * (2 / 3))
    assert _nltk_meteor(prediction, [reference]) == pytest.approx(100 * fmean * 0.5)
    assert sentence_meteor(word_tokens(prediction), word_tokens(reference)) == \
        pytest.approx(fmean * (1 - 0.5 / 8))


# --- every metric's own compute scores NFC text, as compute_metrics does -----------------------

NFC_CASES = [
    ("rouge", "rouge1", {"mode": "paper"}),
    ("bleu", "bleu", {}),
    ("chrf", "chrf", {}),
    ("sari", "sari", {"mode": "paper"}),
    ("exact_match", "exact_match", {"convention": "mlqa-es"}),
    ("exact_match", "exact_match", {"convention": "loose"}),
    ("token_f1", "token_f1", {"convention": "squad"}),
    ("token_f1", "token_f1", {"convention": "whitespace-membership"}),
    ("meteor", "meteor", {}),
]


@pytest.mark.parametrize("name, key, options", NFC_CASES)
def test_each_metrics_compute_scores_decomposed_accents_as_compute_metrics(name, key, options):
    # Each module's compute is "what the Metric class computes" and compute_metrics' per-metric
    # step; called directly it compared code points: bleu.compute gave 59.46 and mlqa-es exact
    # match 0 for "canción" typed with a combining accent against the composed word.
    composed = "la canción del año ganó en España"
    decomposed = nfd(composed)
    assert decomposed != composed
    compute = METRIC_FUNCTIONS[name]
    sources = {"sources": [decomposed]} if name == "sari" else {}
    direct = compute([decomposed], [[composed]], **sources, **options)
    assert direct[key] == pytest.approx(compute([composed], [[composed]],
                                                **({"sources": [composed]} if sources else {}),
                                                **options)[key])
    assert direct[key] == pytest.approx(100.0) or name == "meteor"


# --- survivors of a mutation audit of the metrics (2026-12-05): each case tells the mutant apart

def _bleu_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacreBLEU's reference streams; an example with fewer references has None (not "",
    which sacreBLEU counts as a zero-length reference)."""
    width = max(len(example) for example in references)
    return [[example[i] if i < len(example) else None for example in references]
            for i in range(width)]


@pytest.mark.parametrize("predictions, references, expected", [
    # no 3- or 4-gram matches: sacreBLEU's exp smoothing (floor gives 18.80)
    (["El gato come pescado"], [["El perro come pescado"]], 35.355),
    # shorter than 4 tokens: no effective order (it gives 34.67)
    (["El gato come"], [["El perro come"]], 0.0),
    # a short prediction beside an example with more references: a missing reference is no
    # empty one (which cancels the brevity penalty: 100.0)
    (["El gato come", "Hoy llueve mucho en Madrid"],
     [["El gato come pescado fresco en casa hoy"],
      ["Hoy llueve mucho en Madrid", "En Madrid llueve"]], 53.53)])
def test_bleu_smoothing_orders_and_missing_references_equal_sacrebleu(predictions, references,
                                                                      expected):
    reference = sacrebleu.corpus_bleu(predictions, _bleu_streams(references)).score
    assert reference == pytest.approx(expected, abs=5e-3)
    assert compute_metrics(["bleu"], predictions, references)["bleu"] == \
        pytest.approx(reference, abs=1e-9)


def test_rouge_takes_each_types_best_reference_as_rouge_scores_score_multi():
    # The rouge1-best reference is not the rouge2/rougeL-best one: each type its own best.
    prediction, references = "gato come pan hoy", ["hoy pan come gato", "gato come agua fría"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"],
                                      tokenizer=_SpanishTokens(True))
    expected = scorer.score_multi(references, prediction)
    ours = compute_metrics(["rouge"], [prediction], [references])
    for name in ("rouge1", "rouge2", "rougeL"):
        assert ours[name] == pytest.approx(100 * expected[name].fmeasure, abs=1e-9), name
    assert (ours["rouge2"], ours["rougeL"]) == (pytest.approx(100 / 3), pytest.approx(50.0))


def test_paper_rouge_lsum_resplits_the_references_sentences_too():
    # split_sentences in paper mode splits both sides: here only the reference has two.
    ours = compute_metrics(["rouge"], ["Ana canta."], [["Canta. Ana ríe."]], mode="paper",
                           options={"rouge": {"split_sentences": True}})["rougeLsum"]
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    expected = scorer.score("Canta.\nAna ríe.", "Ana canta.")["rougeLsum"].fmeasure
    assert ours == pytest.approx(100 * expected) and ours == pytest.approx(200 / 3)


def test_spanish_sari_tokens_are_single_punctuation_marks():
    from seq2seq_es.metrics.text import word_and_punct_tokens

    assert word_and_punct_tokens("«¿Vienes?», dijo.") == ["«", "¿", "vienes", "?", "»", ",",
                                                          "dijo", "."]


@pytest.mark.parametrize("text, sentences", [
    ("Esperó… Luego se fue.", ["Esperó…", "Luego se fue."]),          # the ellipsis ends one
    ("Llegaron tarde. 25 personas esperaban.", ["Llegaron tarde.",
                                                 "25 personas esperaban."]),  # before a digit
    ("Vive en EE.UU. Trabaja allí.", ["Vive en EE.UU. Trabaja allí."]),  # a dotted abbreviation
])
def test_the_spanish_sentence_splitter(text, sentences):
    assert split_sentences(text) == sentences


def test_meteor_links_exact_matches_before_stem_matches_as_nltk():
    # "comió" matches once exactly and "come" only by its stem: nltk's stages go exact first.
    prediction, reference = "comió el", "comió come el"
    ours = compute_metrics(["meteor"], [prediction], [[reference]])["meteor"]
    assert ours == pytest.approx(_nltk_meteor(prediction, [reference]), abs=1e-6)
    assert ours == pytest.approx(34.48, abs=5e-3)


def test_meteor_local_search_on_a_long_repetitive_pair_is_pinned():
    # Beyond the exhaustive limit the alignment comes from the local search, which no external
    # implementation has: its start (relative positions) and its passes decide the crossings
    # and chunks. Pinned at the value of the search as documented (2026-12-05).
    from seq2seq_es.metrics.meteor import align, count_chunks, count_crossings

    prediction = ("de que gatos come de el gatos gatos gato la la el que el el el que de el "
                  "de").split()
    reference = ("de que de gato la de la gatos de el la gatos de que el gatos que el el la el "
                 "que que").split()
    alignment = align(prediction, reference)
    assert (count_crossings(alignment), count_chunks(alignment)) == (29, 13)
    assert compute_metrics(["meteor"], [" ".join(prediction)], [[" ".join(reference)]]
                           )["meteor"] == pytest.approx(64.36, abs=5e-3)
