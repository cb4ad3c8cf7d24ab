"""Tests of seq2seq_es.metrics: hand-computed values, cross-checks against independent
implementations (rouge_score, sacrebleu, nltk), the Spanish sentence splitter, and the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import unicodedata

import evaluate
import pytest
import numpy as np
import sacrebleu
from nltk.translate.meteor_score import single_meteor_score
from nltk_meteor import nltk_single_meteor
from rouge_score import rouge_scorer

from seq2seq_es.errors import ConfigError, DataError, Seq2SeqEsError, UnknownNameError
from seq2seq_es.metrics import METRIC_FUNCTIONS, METRICS, compute_metrics, score_main
from seq2seq_es.metrics.cli import METRIC_NAMES_HELP
from seq2seq_es.metrics.exact_match import ExactMatch
from seq2seq_es.metrics.meteor import Meteor, align, count_chunks, sentence_meteor
from seq2seq_es.metrics.rouge import (ROUGE_TYPES, Rouge, lcs_length, lcs_reference_indices,
                                      score_spanish, spanish_tokenizer)
from seq2seq_es.metrics.sari import Sari, corpus_sari
from seq2seq_es.metrics.text import split_sentences, word_and_punct_tokens, word_tokens
from seq2seq_es.metrics.token_f1 import TokenF1

SENTENCE = "La canción española ganó el premio."


# --- tokens and sentences -------------------------------------------------------------------

def test_word_tokens_keep_spanish_words_whole():
    assert word_tokens("¿Qué canción ganó?") == ["qué", "canción", "ganó"]
    assert word_tokens(unicodedata.normalize("NFD", "Canción")) == ["canción"]
    assert word_tokens("a <SPLIT> b _SPLIT_ c") == ["a", "<split>", "b", "_split_", "c"]
    assert word_and_punct_tokens("¡Sí! <SPLIT> Bien.") == ["¡", "sí", "!", "<split>", "bien", "."]


@pytest.mark.parametrize("text, expected", [
    ("El Sr. García llegó. La Sra. Pérez no.", ["El Sr. García llegó.", "La Sra. Pérez no."]),
    ("La Dra. Ruiz viajó a EE.UU. en 2020. Volvió.", ["La Dra. Ruiz viajó a EE.UU. en 2020.", "Volvió."]),
    ("Costó 3.5 millones. Nadie lo sabía.", ["Costó 3.5 millones.", "Nadie lo sabía."]),
    ("¿Vienes? ¡Claro! Vamos ya.", ["¿Vienes?", "¡Claro!", "Vamos ya."]),
    ("¿Vienes?¡Claro!", ["¿Vienes?", "¡Claro!"]),
    ("¿Qué? preguntó él.", ["¿Qué? preguntó él."]),
    ("Escribió J. R. R. Tolkien. Fin…", ["Escribió J. R. R. Tolkien.", "Fin…"]),
    ("Esperó... Nadie vino.", ["Esperó...", "Nadie vino."]),
    ("Compró pan, etc. Luego salió.", ["Compró pan, etc.", "Luego salió."]),
    ("Dijo: «Me voy.» Y se fue.", ["Dijo: «Me voy.»", "Y se fue."]),
    ("Primera línea\nsegunda línea", ["Primera línea", "segunda línea"]),
    ("—¿Vienes? —Sí, claro.", ["—¿Vienes?", "—Sí, claro."]),
    ("  \n", []),
])
def test_split_sentences_spanish(text, expected):
    assert split_sentences(text) == expected


# --- ROUGE ----------------------------------------------------------------------------------

def test_rouge_identical_accented_sentence_scores_100_in_both_modes():
    for mode in ("spanish", "paper"):
        scores = Rouge().compute(predictions=[SENTENCE], references=[SENTENCE], mode=mode)
        assert scores == {t: 100.0 for t in ROUGE_TYPES}


def test_rouge_paper_mode_breaks_words_at_accents():
    # rouge_score keeps [a-z0-9] only: "canción" -> "canci" "n", "razón" -> "raz" "n",
    # so the stray "n" matches: P = R = 1/2.
    paper = Rouge().compute(predictions=["canción"], references=["razón"], mode="paper")
    spanish = Rouge().compute(predictions=["canción"], references=["razón"], mode="spanish")
    assert paper["rouge1"] == pytest.approx(50.0)
    assert spanish["rouge1"] == 0.0
    # An unaccented spelling: no shared token in paper mode; one stem in spanish mode.
    paper = Rouge().compute(predictions=["canción"], references=["cancion"], mode="paper")
    spanish = Rouge().compute(predictions=["canción"], references=["cancion"])
    unstemmed = Rouge().compute(predictions=["canción"], references=["cancion"], use_stemmer=False)
    assert paper["rouge1"] == 0.0
    assert spanish["rouge1"] == 100.0 and spanish["rougeL"] == 100.0
    assert unstemmed["rouge1"] == 0.0


def test_rouge_hand_computed_values():
    scores = Rouge().compute(predictions=["El gato come pescado"], references=["el gato negro come"],
                             use_stemmer=False)
    # unigrams: el gato come shared (3 of 4 each); bigrams: "el gato" only (1 of 3 each);
    # LCS "el gato come" = 3.
    assert scores["rouge1"] == pytest.approx(75.0)
    assert scores["rouge2"] == pytest.approx(100 / 3)
    assert scores["rougeL"] == pytest.approx(75.0)
    assert scores["rougeLsum"] == pytest.approx(75.0)


def test_rouge_lsum_matches_reordered_sentences():
    prediction = "El perro ladra. La casa es roja."
    reference = "La casa es roja. El perro ladra."
    scores = Rouge().compute(predictions=[prediction], references=[reference])
    assert scores["rougeL"] == pytest.approx(100 * 4 / 7)  # LCS "la casa es roja"
    assert scores["rougeLsum"] == pytest.approx(100.0)


def test_rouge_precision_recall_and_mean_over_examples():
    scores = Rouge().compute(predictions=["el gato", "perro"], references=["el gato negro", "gato"],
                             use_stemmer=False, with_precision_recall=True)
    assert scores["rouge1_precision"] == pytest.approx((100 + 0) / 2)
    assert scores["rouge1_recall"] == pytest.approx((100 * 2 / 3 + 0) / 2)
    assert scores["rouge1"] == pytest.approx((80 + 0) / 2)


def test_rouge_takes_best_reference():
    scores = Rouge().compute(predictions=[SENTENCE], references=[["Otra cosa.", SENTENCE]])
    assert scores["rouge1"] == 100.0


class _Tokenizer:
    def __init__(self, tokenize):
        self.tokenize = tokenize


def test_rouge_spanish_mode_agrees_with_rouge_score_given_our_tokens():
    rng = random.Random(7)
    vocabulary = "la el canción ganó premio de una y en que . ! ¿ ? Sr. España casa".split()
    tokenize = spanish_tokenizer(use_stemmer=True)
    reference_scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_Tokenizer(tokenize))
    for _ in range(60):
        prediction = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 30)))
        reference = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 30)))
        ours = score_spanish(prediction, reference)
        theirs = reference_scorer.score("\n".join(split_sentences(reference)),
                                        "\n".join(split_sentences(prediction)))
        for rouge_type in ROUGE_TYPES:
            assert ours[rouge_type].fmeasure == pytest.approx(theirs[rouge_type].fmeasure, abs=1e-12)
            assert ours[rouge_type].recall == pytest.approx(theirs[rouge_type].recall, abs=1e-12)


def _lcs_by_table(first, second):
    table = [[0] * (len(second) + 1) for _ in range(len(first) + 1)]
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_bit_parallel_lcs_matches_dynamic_programme():
    rng = random.Random(3)
    for _ in range(200):
        first = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        second = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        expected = _lcs_by_table(first, second)
        assert lcs_length(first, second) == expected
        indices = lcs_reference_indices(first, second)
        assert len(indices) == expected and indices == sorted(set(indices))


def test_rouge_unknown_mode():
    with pytest.raises(UnknownNameError, match="ROUGE mode 'english'"):
        Rouge().compute(predictions=["a"], references=["a"], mode="english")


# --- BLEU -----------------------------------------------------------------------------------

PREDICTIONS = ["El gato come pescado en la cocina.", "¿Dónde está la estación de tren?",
               "Mañana lloverá en Madrid."]
REFERENCES = ["El gato come pescado en la cocina grande.", "¿Dónde queda la estación de trenes?",
              "Mañana va a llover en Madrid."]


def test_bleu_equals_sacrebleu():
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert 0 < expected < 100
    assert compute_metrics(["bleu"], PREDICTIONS, REFERENCES) == {"bleu": pytest.approx(expected)}
    as_lists = compute_metrics(["bleu"], PREDICTIONS, [[r] for r in REFERENCES])
    assert as_lists["bleu"] == pytest.approx(expected)


def test_bleu_multi_reference_with_varying_counts():
    references = [[REFERENCES[0], PREDICTIONS[0]], [REFERENCES[1]], [REFERENCES[2]]]
    expected = sacrebleu.corpus_bleu(
        PREDICTIONS, [REFERENCES, [PREDICTIONS[0], None, None]]).score
    score = compute_metrics(["bleu"], PREDICTIONS, references)["bleu"]
    assert score == pytest.approx(expected)
    assert score > sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score


# --- SARI -----------------------------------------------------------------------------------

def test_sari_published_example():
    # The example documented with evaluate's sari (the authors' implementation).
    sources = ["About 95 species are currently accepted ."]
    predictions = ["About 95 you now get in ."]
    references = [["About 95 species are currently known .", "About 95 species are now accepted .",
                   "95 species are now accepted ."]]
    score = Sari().compute(sources=sources, predictions=predictions, references=references)
    assert score["sari"] == pytest.approx(26.953601953601954)


def test_sari_identity_scores_100():
    text = "La canción española ganó el premio."
    assert corpus_sari([text], [text], [[text]]) == pytest.approx(100.0)


def test_sari_hand_computed_copy_of_source():
    # source "a b", prediction copies it, reference "a c".
    # n=1: keep P = (1/1 + 0/1)/2 = 1/2, R = 1/1, F = 2/3; delete P = 1 (nothing deleted);
    #      add P = 1 (nothing added), R = 0/1, F = 0.
    # n=2: keep P = 0, R = 1 (0/0), F = 0; delete 1; add P = 1, R = 0 ("a c" not added), F = 0.
    # n=3, n=4: no n-grams, every ratio 0/0 = 1.
    # SARI = ((2/3 + 0 + 1 + 1)/4 + 1 + (0 + 0 + 1 + 1)/4) / 3 = 13/18.
    assert corpus_sari(["a b"], ["a b"], [["a c"]]) == pytest.approx(100 * 13 / 18)


def test_sari_hand_computed_two_references():
    # source "a b", prediction "a", references "a" and "a b" (source/prediction counts x2).
    # n=1: keep P = 2/2, R = 2/3 (source grams the references keep: a x2, b x1), F = 4/5;
    #      delete: b deleted twice, references delete it once: P = 1/2; add: nothing, F = 1.
    # n=2: keep P = 1 (0/0), R = 0/1, F = 0; delete "a b": P = 1/2; add F = 1.
    # n=3, 4: all 1.  SARI = ((4/5 + 0 + 2)/4 + (1/2 + 1/2 + 2)/4 + 1) / 3 = 49/60.
    assert corpus_sari(["a b"], ["a"], [["a", "a b"]]) == pytest.approx(100 * 49 / 60)


def test_sari_split_marker_is_an_ordinary_token():
    source = "El perro ladra y la casa es roja."
    split = "El perro ladra. <SPLIT> La casa es roja."
    assert corpus_sari([source], [split], [[split]]) == pytest.approx(100.0)
    assert corpus_sari([source], [source], [[split]]) < 100.0
    without_marker = "El perro ladra. La casa es roja."
    assert corpus_sari([source], [without_marker], [[split]]) < 100.0


# --- METEOR ---------------------------------------------------------------------------------

def test_meteor_identical_is_one_chunk():
    # 6 words, 1 chunk: Fmean = 1, penalty = 0.5 * (1/6)^3.
    scores = Meteor().compute(predictions=[SENTENCE], references=[SENTENCE])
    assert scores["meteor"] == pytest.approx(100 * (1 - 0.5 / 216))
    # One word: one chunk of one match, penalty 0.5 (what the docstring says, and nltk gives).
    assert Meteor().compute(predictions=["Sí."], references=["sí"])["meteor"] == 50.0
    assert single_meteor_score(["sí"], ["sí"]) == pytest.approx(0.5, abs=1e-3)


def test_meteor_stem_matches_count():
    # No exact match, both words match on Snowball stems ("cancion", "nuev"): 2 matches, 1 chunk.
    assert word_tokens("canciones nuevas") != word_tokens("canción nueva")
    assert sentence_meteor(["canciones", "nuevas"], ["canción", "nueva"]) == pytest.approx(1 - 0.5 / 8)


def test_meteor_hand_computed_fmean_and_fragmentation():
    # P = 1, R = 2/3: Fmean = (2/3) / (0.9 + 0.1 * 2/3); one chunk of 2: penalty 0.5/8.
    fmean = (2 / 3) / (0.9 + 0.1 * 2 / 3)
    assert sentence_meteor(["el", "gato"], ["el", "gato", "negro"]) == pytest.approx(fmean * (1 - 0.5 / 8))
    # Swapped words: 2 chunks of 1, penalty 0.5 * 1^3.
    assert sentence_meteor(["roja", "casa"], ["casa", "roja"]) == pytest.approx(0.5)
    assert sentence_meteor([], ["casa"]) == 0.0
    assert sentence_meteor(["perro"], ["casa"]) == 0.0


def test_meteor_repeated_words_pair_in_order():
    alignment = align(["el", "perro", "y", "el", "gato"], ["el", "perro", "y", "el", "gato"])
    assert alignment == [(i, i) for i in range(5)]
    assert count_chunks(alignment) == 1


def test_meteor_repeated_words_take_the_alignment_with_fewest_crossings():
    # Each repeated word was linked on its own to the occurrence closest in relative position:
    # "las" went to the second "las", across "ocho" (42.88 instead of one chunk, 47.88), and
    # "no no" / "no no no" split into two chunks (34.48; nltk 64.66).
    prediction = "el tren de las ocho".split()
    reference = "el tren de las ocho y el tren de las nueve".split()
    assert align(prediction, reference) == [(i, i) for i in range(5)]
    assert 100 * sentence_meteor(prediction, reference) == pytest.approx(47.88, abs=0.01)
    assert align(["no", "no"], ["no", "no", "no"]) == [(0, 0), (1, 1)]
    assert 100 * sentence_meteor(["no", "no"], ["no", "no", "no"]) == pytest.approx(64.66, abs=0.01)
    assert align(["sí", "de", "acuerdo"], ["sí", "sí", "de", "acuerdo"]) == [(0, 1), (1, 2), (2, 3)]


def test_meteor_alignment_has_the_fewest_crossings_of_all_maximal_alignments():
    # Brute force over every alignment that links as many words as possible.
    import random
    from collections import Counter

    from seq2seq_es.metrics.meteor import count_crossings

    rng = random.Random(0)
    for _ in range(300):
        prediction = [rng.choice("abcd") for _ in range(rng.randint(1, 7))]
        reference = [rng.choice("abcd") for _ in range(rng.randint(1, 7))]
        most = sum(min(n, Counter(reference)[word]) for word, n in Counter(prediction).items())
        fewest = []

        def search(i, used, links):
            if i == len(prediction):
                if len(links) == most:
                    fewest.append(count_crossings(links))
                return
            search(i + 1, used, links)
            for j, word in enumerate(reference):
                if j not in used and word == prediction[i]:
                    search(i + 1, used | {j}, links + [(i, j)])

        search(0, frozenset(), [])
        alignment = align(prediction, reference)
        assert len(alignment) == most
        assert count_crossings(alignment) == min(fewest), (prediction, reference)


def test_meteor_long_repetitive_texts_use_the_local_search(monkeypatch):
    # Beyond EXHAUSTIVE_LIMIT alignments the search starts from the closest links and only
    # moves to fewer crossings: never worse than that start.
    import random

    from seq2seq_es.metrics import meteor
    from seq2seq_es.metrics.meteor import count_crossings

    rng = random.Random(1)
    words = "el la de que en los se del las un".split()
    prediction = [rng.choice(words) for _ in range(40)]
    reference = [rng.choice(words) for _ in range(50)]
    searched = align(prediction, reference)
    monkeypatch.setattr(meteor, "LOCAL_SEARCH_PASSES", 0)
    start = align(prediction, reference)
    assert len(searched) == len(start)
    assert count_crossings(searched) < count_crossings(start)




def test_meteor_agrees_with_nltk_without_synonyms():
    # With distinct words nltk's greedy alignment and ours coincide.
    pairs = [("las canciones nuevas ganaron premios", "la canción nueva ganó el premio"),
             ("el perro come en casa", "en casa el perro come"),
             ("mañana lloverá mucho en madrid", "mañana va a llover en madrid")]
    for prediction, reference in pairs:
        expected = nltk_single_meteor(reference.split(), prediction.split())
        assert sentence_meteor(prediction.split(), reference.split()) == pytest.approx(expected)
        assert expected > 0


# --- token F1 and exact match ---------------------------------------------------------------

def test_token_f1_values_and_empty_cases():
    def f1(prediction, reference):
        return TokenF1().compute(predictions=[prediction], references=[reference])["token_f1"]

    assert f1("La canción", "la canción española") == pytest.approx(80.0)
    assert f1("¿Qué?", "qué") == 100.0
    assert f1("", "algo") == 0.0
    assert f1("algo", "") == 0.0
    assert f1("", "") == 0.0
    assert f1("¿?", "¡!") == 0.0
    multi = TokenF1().compute(predictions=["sí"], references=[["no", "Sí."]])
    assert multi["token_f1"] == 100.0


def test_exact_match_normalises_whitespace_and_optionally_case():
    def em(prediction, reference, **options):
        return ExactMatch().compute(predictions=[prediction], references=[reference],
                                    **options)["exact_match"]

    assert em("  La  canción\n", "La canción") == 100.0
    assert em(unicodedata.normalize("NFD", "canción"), "canción") == 100.0
    assert em("la canción", "La canción") == 0.0
    assert em("la canción", "La canción", ignore_case=True) == 100.0
    assert em("canción", "cancion") == 0.0
    scores = ExactMatch().compute(predictions=["a", "b"], references=[["x", "a"], ["c"]])
    assert scores["exact_match"] == 50.0


# --- compute_metrics ------------------------------------------------------------------------

def test_registry_and_help_name_every_metric():
    assert set(METRICS) == {"rouge", "bleu", "chrf", "sari", "exact_match", "meteor", "token_f1"}
    assert all(issubclass(cls, evaluate.Metric) for cls in METRICS.values())
    assert set(METRIC_NAMES_HELP.split(", ")) == set(METRICS) == set(METRIC_FUNCTIONS)


def test_compute_metrics_merges_all_keys_deterministically():
    sources = ["El gato come pescado en la cocina grande.", "¿Dónde está la estación?", "Lloverá."]
    arguments = (list(METRICS), PREDICTIONS, REFERENCES, sources)
    first = compute_metrics(*arguments)
    assert set(first) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "sari",
                          "exact_match", "meteor", "token_f1"}
    assert all(0.0 <= value <= 100.0 for value in first.values())
    assert compute_metrics(*arguments) == first
    assert first["rouge1"] != compute_metrics(["rouge"], PREDICTIONS, REFERENCES, mode="paper")["rouge1"]


def test_compute_metrics_options():
    stemmed = compute_metrics(["rouge"], ["canciones"], ["canción"])
    unstemmed = compute_metrics(["rouge"], ["canciones"], ["canción"],
                                options={"rouge": {"use_stemmer": False}})
    assert (stemmed["rouge1"], unstemmed["rouge1"]) == (100.0, 0.0)
    with pytest.raises(ConfigError, match="rouge.stemmer"):
        compute_metrics(["rouge"], ["a"], ["a"], options={"rouge": {"stemmer": False}})


def test_compute_metrics_errors():
    with pytest.raises(UnknownNameError, match="unknown metric 'rogue'"):
        compute_metrics(["rouge", "rogue"], ["a"], ["a"])
    with pytest.raises(Seq2SeqEsError, match="3 predictions but 2 references"):
        compute_metrics(["bleu"], ["a", "b", "c"], ["a", "b"])
    with pytest.raises(DataError, match="'sari' needs the source texts"):
        compute_metrics(["sari"], ["a"], ["a"])
    with pytest.raises(DataError, match="2 predictions but 1 sources"):
        compute_metrics(["sari"], ["a", "b"], ["a", "b"], sources=["a"])
    with pytest.raises(DataError, match="no predictions"):
        compute_metrics(["rouge"], [], [])
    with pytest.raises(DataError, match="example 1: a reference"):
        compute_metrics(["rouge"], ["a", "b"], [["a"], []])
    with pytest.raises(UnknownNameError, match="ROUGE mode"):
        compute_metrics(["bleu"], ["a"], ["a"], mode="english")


def test_compute_metrics_names_a_source_that_is_not_a_string():
    # An unchecked source list reached SARI's tokenizer: a TypeError naming no example.
    with pytest.raises(DataError, match="example 1: a source must be a string, got list"):
        compute_metrics(["sari"], ["a", "b"], ["a", "b"], sources=["a", ["b"]])
    with pytest.raises(DataError, match="example 0: a source must be a string, got NoneType"):
        compute_metrics(["bleu"], ["a"], ["a"], sources=[None])


def test_compute_metrics_names_a_prediction_that_is_not_a_string():
    # A None prediction (a failed generation) reached the metrics: a TypeError, or a score.
    with pytest.raises(DataError, match="example 1: a prediction must be a string, got NoneType"):
        compute_metrics(["bleu"], ["a", None], ["a", "b"])
    with pytest.raises(DataError, match="example 0: a prediction must be a string, got int"):
        compute_metrics(["exact_match"], [7], ["7"])


# --- score_main -----------------------------------------------------------------------------

def _write(path, text):
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_score_main_prints_the_scores_of_compute_metrics(tmp_path, capsys):
    predictions = _write(tmp_path / "pred.txt", "\n".join(PREDICTIONS) + "\n")
    references = _write(tmp_path / "ref.txt", "\r\n".join(REFERENCES) + "\r\n")
    code = score_main(["--metric", "rouge", "--metric", "meteor", "--mode", "paper",
                       "--predictions", predictions, "--references", references])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == pytest.approx(compute_metrics(["rouge", "meteor"], PREDICTIONS, REFERENCES,
                                                    mode="paper"))


def test_score_main_jsonl_references_sources_and_empty_lines(tmp_path, capsys):
    predictions = _write(tmp_path / "pred.txt", "Sí.\n\n")
    references = _write(tmp_path / "ref.jsonl", '["No.", "Sí."]\n"algo"\n')
    sources = _write(tmp_path / "src.txt", "Sí, claro.\nalgo\n")
    code = score_main(["--metric", "exact_match", "--metric", "sari", "--predictions", predictions,
                       "--references", references, "--sources", sources])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["exact_match"] == 50.0
    assert printed["sari"] == pytest.approx(
        compute_metrics(["sari"], ["Sí.", ""], [["No.", "Sí."], ["algo"]], ["Sí, claro.", "algo"])["sari"])


def test_score_main_prints_a_perfect_score_as_100_not_its_float_noise(tmp_path, capsys):
    lines = _write(tmp_path / "same.txt", "el gato come pescado\nla casa es roja y grande\n")
    assert compute_metrics(["bleu"], ["el gato come pescado"] * 2,
                           ["el gato come pescado"] * 2)["bleu"] != 100.0  # the noise itself
    assert score_main(["--metric", "bleu", "--metric", "rouge", "--predictions", lines,
                       "--references", lines]) == 0
    out = capsys.readouterr().out
    assert '"bleu": 100.0,' in out and '"rougeL": 100.0' in out


def test_score_main_reads_the_jsonl_that_predict_and_evaluate_write(tmp_path, capsys):
    # A .jsonl predictions file was scored line by line as text, JSON and source included.
    rows = [{"source": "Un texto largo sobre el tiempo.", "prediction": "Llueve en Madrid."},
            {"source": "Otro texto.", "prediction": "Sale el sol."}]
    predicted = _write(tmp_path / "summaries.jsonl",
                       "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    evaluated = _write(tmp_path / "predictions.jsonl", "".join(json.dumps(
        {**row, "example_id": i, "reference": ["Llueve en Madrid.", "Hace sol."][i]},
        ensure_ascii=False) + "\n" for i, row in enumerate(rows)))
    references = _write(tmp_path / "ref.txt", "Llueve en Madrid.\nHace sol.\n")
    expected = compute_metrics(["rouge"], ["Llueve en Madrid.", "Sale el sol."],
                               ["Llueve en Madrid.", "Hace sol."])
    for predictions, refs in [(predicted, references), (evaluated, evaluated)]:
        assert score_main(["--metric", "rouge", "--predictions", predictions,
                           "--references", refs]) == 0
        assert json.loads(capsys.readouterr().out) == pytest.approx(expected)
    bad = _write(tmp_path / "bad.jsonl", '{"prediction": "a"}\n{"text": "b"}\n')
    assert score_main(["--metric", "rouge", "--predictions", bad, "--references", references]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err and '"prediction"' in err


def test_score_pairs_lines_only_where_their_example_ids_agree(tmp_path, capsys):
    # Files carrying ids (evaluate's predictions.jsonl) were paired by position alone: a
    # reordered file scored 0 for perfect predictions, a repeated example counted twice.
    def rows(ids, texts, key):
        return "".join(json.dumps({"example_id": i, key: t}) + "\n" for i, t in zip(ids, texts))
    texts = ["el gato duerme", "la casa es roja"]
    references = _write(tmp_path / "ref.jsonl", rows([0, 1], texts, "reference"))
    in_order = _write(tmp_path / "pred.jsonl", rows([0, 1], texts, "prediction"))
    assert score_main(["--metric", "exact_match", "--predictions", in_order,
                       "--references", references]) == 0
    assert json.loads(capsys.readouterr().out) == {"exact_match": 100.0}
    reordered = _write(tmp_path / "reordered.jsonl", rows([1, 0], texts[::-1], "prediction"))
    assert score_main(["--metric", "exact_match", "--predictions", reordered,
                       "--references", references]) == 2
    assert (f"file {reordered}, line 1: example_id '1' where {references} has '0' at the same "
            "line") in capsys.readouterr().err
    repeated = _write(tmp_path / "repeated.jsonl", rows([0, 0], texts, "prediction"))
    assert score_main(["--metric", "exact_match", "--predictions", repeated,
                       "--references", _write(tmp_path / "ref.txt", "\n".join(texts))]) == 0
    assert (f"note: {repeated}: 1 line(s) repeat an earlier example_id (line 2 repeats "
            "example_id '0' of line 1)") in capsys.readouterr().err
    sources = _write(tmp_path / "src.jsonl", rows([1, 0], texts, "source"))
    assert score_main(["--metric", "sari", "--predictions", in_order, "--references", references,
                       "--sources", sources]) == 2
    assert f"where {sources} has '1' at the same line" in capsys.readouterr().err


def test_score_reads_json_lines_by_a_suffix_in_any_case_and_refuses_ndjson(tmp_path, capsys):
    # R.JSONL was read as plain lines: its JSON markup was scored as text (rouge1 33.3).
    texts = ["el gato duerme", "la casa es roja"]
    upper = _write(tmp_path / "R.JSONL", "".join(json.dumps({"reference": t}) + "\n"
                                                 for t in texts))
    plain = _write(tmp_path / "p.txt", "\n".join(texts) + "\n")
    assert score_main(["--metric", "rouge", "--predictions", plain, "--references", upper]) == 0
    assert json.loads(capsys.readouterr().out)["rouge1"] == 100.0
    ndjson = _write(tmp_path / "r.ndjson", "".join(json.dumps(t) + "\n" for t in texts))
    assert score_main(["--metric", "rouge", "--predictions", plain, "--references", ndjson]) == 2
    assert (f"argument --references: {ndjson}: JSON lines are read from a file named .jsonl"
            in capsys.readouterr().err)


def test_score_task_split_rephrase_reads_the_datasets_marker_as_a_run_does(tmp_path, capsys):
    # References from the data file get ` <SPLIT> `; predictions written with the dataset's own
    # `_SPLIT_` were not cleaned as a run cleans decoded text, and lost ~27 SARI points.
    targets = ["El gato come pescado. _SPLIT_ El perro duerme en casa.",
               "Juan canta bien. _SPLIT_ María baila mejor."]
    sources = ["El gato come pescado y el perro duerme en casa.",
               "Juan canta bien y María baila mejor."]
    data = _write(tmp_path / "bisect.jsonl", "".join(
        json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n"
        for s, t in zip(sources, targets)))
    predictions = _write(tmp_path / "pred.txt", "\n".join(targets) + "\n")
    source_file = _write(tmp_path / "src.txt", "\n".join(sources) + "\n")
    for references in (data, predictions):  # the data file, and a plain file of the same texts
        assert score_main(["--task", "bisect", "--predictions", predictions, "--references",
                           references, "--sources", source_file]) == 0
        assert json.loads(capsys.readouterr().out) == {"sari": 100.0, "bleu": 100.0,
                                                       "exact_match": 100.0}


def test_score_with_a_task_reads_the_tasks_own_data_file_as_references(tmp_path, capsys):
    # predict reads a task's data file through its columns; score --task now does too: every
    # answer of a QA row, the summary of a summarization row (jsonl or csv).
    rows = [{"question": "¿Dónde llueve?", "context": "Llueve en Madrid.",
             "answers": {"text": ["en Madrid", "Madrid"], "answer_start": [8, 11]}},
            {"question": "¿Qué sale?", "context": "Sale el sol.",
             "answers": {"text": ["el sol"], "answer_start": [5]}}]
    data = _write(tmp_path / "test.jsonl",
                  "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    predictions = _write(tmp_path / "pred.txt", "Madrid\nla luna\n")
    assert score_main(["--task", "sqac", "--predictions", predictions, "--references", data]) == 0
    scores = json.loads(capsys.readouterr().out)
    expected = compute_metrics(["exact_match"], ["Madrid", "la luna"],
                               [["en Madrid", "Madrid"], ["el sol"]],
                               options={"exact_match": {"convention": "mlqa-es"}})
    assert scores["exact_match"] == pytest.approx(expected["exact_match"]) == 50.0
    summaries = _write(tmp_path / "test.csv", 'text,summary\n"Un texto, largo.",Llueve.\n'
                                              "Otro texto.,Sale el sol.\n")
    both = _write(tmp_path / "two.txt", "Llueve.\nSale el sol.\n")
    assert score_main(["--task", "mlsum", "--predictions", both, "--references", summaries]) == 0
    assert json.loads(capsys.readouterr().out)["rougeL"] == 100.0
    broken = _write(tmp_path / "broken.jsonl", json.dumps(rows[0], ensure_ascii=False) + "\n"
                    + json.dumps({**rows[1], "answers": {"text": 5}}) + "\n")
    one = _write(tmp_path / "one.txt", "Madrid\n")
    # A bad row is skipped and said, as a run's scoring skips it.
    assert score_main(["--task", "sqac", "--predictions", one, "--references", broken]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exact_match"] == 100.0
    assert (f"{broken}: read as a sqac data file (--task); left out 1 bad row(s), as a run's "
            "scoring does: line 2: column 'answers.text' no answer") in captured.err
    # predict writes a prediction for every row it reads (the second row's question and
    # context are fine): the prediction of the row a run leaves out is left out too.
    two = _write(tmp_path / "two_answers.txt", "Madrid\nel sol\n")
    assert score_main(["--task", "sqac", "--predictions", two, "--references", broken]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exact_match"] == 100.0
    assert (f"{two}: one prediction per data row of {broken} (as predict writes them); the "
            "predictions of the 1 row(s) a run does not score are left out") in captured.err
    # The same for a SQuAD-format document, whose broken question is left out while reading
    # (6 predictions were refused against 5 references), named by its place as training does.
    paragraphs = [{"context": row["context"], "qas": [{
        "id": f"q{index}", "question": row["question"],
        "answers": [{"text": text, "answer_start": start} for text, start
                    in zip(row["answers"]["text"], row["answers"]["answer_start"])]}]}
        for index, row in enumerate(rows)]
    paragraphs.insert(1, {"context": "Hace frío.", "qas": [{"id": "q-bad", "question": "¿Qué?",
                                                            "answers": [{"answer_start": 0}]}]})
    squad = _write(tmp_path / "squad.json", json.dumps(
        {"version": "1", "data": [{"title": "t", "paragraphs": paragraphs}]}, ensure_ascii=False))
    three_rows = _write(tmp_path / "three_rows.txt", "Madrid\nno se sabe\nel sol\n")
    assert score_main(["--task", "sqac", "--predictions", three_rows, "--references", squad]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exact_match"] == 100.0
    assert ("row 1 (question data[0].paragraphs[1].qas[0], id 'q-bad'): column 'answers.text' "
            "missing value") in captured.err
    assert "the predictions of the 1 row(s) a run does not score are left out" in captured.err
    assert score_main(["--task", "sqac", "--predictions", two, "--references", squad]) == 0
    assert json.loads(capsys.readouterr().out)["exact_match"] == 100.0  # one per scored row
    # A line that is not UTF-8, first or not, is skipped as training skips it.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes("{\"question\": \"canción\"\n".encode("latin-1")
                      + json.dumps(rows[0], ensure_ascii=False).encode() + b"\n")
    assert score_main(["--task", "sqac", "--predictions", one, "--references", str(mixed)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exact_match"] == 100.0 and "line 1:" in captured.err
    missing = str(tmp_path / "missing.csv")
    assert score_main(["--task", "mlsum", "--predictions", one, "--references", missing]) == 2
    assert f"file {missing}: file not found" in capsys.readouterr().err
    # TSV as training reads it: no quoting, so a '"' opening a field is text.
    tsv = _write(tmp_path / "test.tsv", 'text\tsummary\nDoc uno.\t"Sí", dijo.\n'
                                        'Doc dos.\t"Abre sin cerrar\nDoc tres.\tFin.\n')
    three = _write(tmp_path / "three.txt", '"Sí", dijo.\n"Abre sin cerrar\nFin.\n')
    assert score_main(["--task", "mlsum", "--predictions", three, "--references", tsv]) == 0
    assert json.loads(capsys.readouterr().out)["rougeL"] == 100.0
    # Without --task such a file is not guessed at: one error says what a line must hold.
    assert score_main(["--metric", "rouge", "--predictions", predictions, "--references", data]) == 2
    assert f"file {data}, line 1: expected a string" in capsys.readouterr().err


def test_score_with_a_task_reads_every_data_format_training_reads(tmp_path, capsys):
    rows = [{"text": "Texto uno.", "summary": "Llueve en Madrid."},
            {"text": "Texto dos.", "summary": "Sale el sol."}]
    predictions = _write(tmp_path / "pred.txt", "Llueve en Madrid.\nSale el sol.\n")
    # A JSON array (once read as two text lines of JSON and scored 50 with exit 0), Parquet
    # (once "not valid UTF-8"), and a .jsonl whose first row lacks a column (once taken for a
    # references file and refused as one).
    array = _write(tmp_path / "test.json", "[" + json.dumps(rows[0], ensure_ascii=False) + ",\n"
                   + json.dumps(rows[1], ensure_ascii=False) + "]\n")
    pandas = pytest.importorskip("pandas")
    parquet = str(tmp_path / "test.parquet")
    pandas.DataFrame(rows).to_parquet(parquet)
    first_bad = _write(tmp_path / "first_bad.jsonl", '{"text": "Sin resumen."}\n' + "".join(
        json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    for data in (array, parquet, first_bad):
        assert score_main(["--task", "mlsum", "--predictions", predictions, "--references",
                           data]) == 0, data
        captured = capsys.readouterr()
        assert json.loads(captured.out)["rouge1"] == 100.0, data
    assert "line 1: column 'summary' missing value" in captured.err
    # A missing column is training's one error, not a note per row.
    renamed = _write(tmp_path / "renamed.csv", "text,resumen\nUno.,Dos.\n")
    assert score_main(["--task", "mlsum", "--predictions", predictions, "--references",
                       renamed]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: file {renamed}, column 'summary': missing column 'summary' (the task needs "
        "text, summary); columns found: text, resumen; data.columns (e.g. article=text) renames "
        "a file's columns to the task's")
    # Neither one per example nor one per row: both counts are named.
    one = _write(tmp_path / "one.txt", "Llueve en Madrid.\n")
    assert score_main(["--task", "mlsum", "--predictions", one, "--references", first_bad]) == 2
    assert (f"error: {one} has 1 predictions but {first_bad} has 2 references (of its 3 data "
            "rows)") in capsys.readouterr().err
    # a row of a mixed-type column, left out as the file is read, is one of its rows too (the
    # count said 3 of 4)
    typed = _write(tmp_path / "typed.jsonl", open(first_bad, encoding="utf-8").read()
                   + '{"text": 123, "summary": "Uno."}\n')
    assert score_main(["--task", "mlsum", "--predictions", one, "--references", typed]) == 2
    assert (f"error: {one} has 1 predictions but {typed} has 2 references (of its 4 data "
            "rows)") in capsys.readouterr().err


def test_score_task_data_files_with_a_reference_column_or_lines_training_leaves_out(tmp_path,
                                                                                   capsys):
    # EUR-Lex-Sum's source column is named "reference": its own data file was taken for a
    # references file and scored against the source texts (exit 0).
    rows = [{"celex_id": str(i), "reference": f"Texto del acto {i}.", "summary": f"Resumen {i}."}
            for i in (1, 2)]
    eurlex = _write(tmp_path / "eurlex.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    summaries = _write(tmp_path / "summaries.txt", "Resumen 1.\nResumen 2.\n")
    assert score_main(["--task", "eurlexsum", "--predictions", summaries, "--references",
                       eurlex]) == 0
    assert json.loads(capsys.readouterr().out)["rouge1"] == 100.0
    # A line that training leaves out before reading (its summary a number) but predict reads
    # (its text is fine): one prediction a line still lines up.
    mixed = _write(tmp_path / "mixed.jsonl", '{"text": "a", "summary": "Uno dos."}\n'
                   '{"text": "b", "summary": 5}\n\n{"text": "c", "summary": "Tres."}\n')
    per_line = _write(tmp_path / "per_line.txt", "Uno dos.\nx\nTres.\n")
    assert score_main(["--task", "mlsum", "--predictions", per_line, "--references",
                       mixed]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rouge1"] == 100.0
    assert "line 2: column 'summary' not a string (int)" in captured.err


def test_an_empty_parquet_file_is_said_to_hold_no_rows(tmp_path):
    pandas = pytest.importorskip("pandas")
    from seq2seq_es.errors import DataError
    from seq2seq_es.tasks.loading import load_examples

    path = str(tmp_path / "empty.parquet")
    pandas.DataFrame({"text": pandas.Series([], dtype=str),
                      "summary": pandas.Series([], dtype=str)}).to_parquet(path)
    with pytest.raises(DataError) as error:
        load_examples("mlsum", "test", data_files={"test": path}, cache_dir=str(tmp_path / "c"))
    assert str(error.value) == (f"file {path}: holds no rows (a Parquet file with its columns "
                                "and 0 rows)")


def test_score_main_errors_name_the_file(tmp_path, capsys):
    predictions = _write(tmp_path / "pred.txt", "a\nb\n")
    missing = str(tmp_path / "missing.txt")
    assert score_main(["--metric", "bleu", "--predictions", predictions, "--references", missing]) == 2
    assert f"file {missing}: file not found" in capsys.readouterr().err

    short = _write(tmp_path / "short.txt", "a\n")
    assert score_main(["--metric", "bleu", "--predictions", predictions, "--references", short]) == 2
    assert f"{predictions} has 2 predictions but {short} has 1 references" in capsys.readouterr().err

    bad_json = _write(tmp_path / "ref.jsonl", '["a"]\n[1]\n')
    assert score_main(["--metric", "bleu", "--predictions", predictions, "--references", bad_json]) == 2
    assert f"file {bad_json}, line 2:" in capsys.readouterr().err

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a\ncanción\n".encode("latin-1"))
    assert score_main(["--metric", "bleu", "--predictions", str(latin1), "--references", predictions]) == 2
    assert f"file {latin1}, line 2: not valid UTF-8" in capsys.readouterr().err

    assert score_main(["--metric", "rogue", "--predictions", predictions, "--references", short]) == 2
    assert "unknown metric 'rogue'" in capsys.readouterr().err
    assert score_main(["--predictions", predictions]) == 2


def test_python_dash_m_runs_the_command(tmp_path):
    predictions = _write(tmp_path / "pred.txt", SENTENCE + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "seq2seq_es.metrics", "--metric", "token_f1", "--metric", "rouge",
         "--predictions", predictions, "--references", predictions],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"token_f1": 100.0, "rouge1": 100.0, "rouge2": 100.0,
                                         "rougeL": 100.0, "rougeLsum": 100.0}


# ---- QA answer conventions ------------------------------------------------------------------
# Expected values follow the rules of the SQuAD v1.1 and MLQA (lang=es) evaluation scripts,
# worked out by hand: lowercase; drop punctuation (ASCII only for squad, every Unicode P* for
# mlqa-es); drop articles as whole words (a/an/the, or un/una/unos/unas/el/la/los/las);
# collapse whitespace. Accents are never folded.
QA_CASES = [
    # prediction, reference, strict EM, squad EM, mlqa-es EM
    ("Madrid.", "Madrid", 0, 100, 100),
    ("madrid", "Madrid", 0, 100, 100),
    ("¿Madrid?", "Madrid", 0, 0, 100),          # ¿ is not ASCII punctuation
    ("El Prado", "Prado", 0, 0, 100),            # Spanish article
    ("the Prado", "Prado", 0, 100, 0),           # English article
    ("Unamuno", "namuno", 0, 0, 0),              # "Un" inside a word stays
    ("canción", "cancion", 0, 0, 0),             # accents count everywhere
    ("1936 — 1939", "1936 1939", 0, 0, 100),     # em dash is Unicode punctuation only
    ("los  años 80", "años 80", 0, 0, 100),
    ("«La Mancha»", "la mancha", 0, 0, 100),
    ("Madrid", "Madrid", 100, 100, 100),
]


@pytest.mark.parametrize("prediction, reference, strict, squad, mlqa", QA_CASES)
def test_exact_match_conventions_follow_the_official_rules(prediction, reference, strict, squad,
                                                           mlqa):
    for convention, expected in (("strict", strict), ("squad", squad), ("mlqa-es", mlqa)):
        score = ExactMatch().compute(predictions=[prediction], references=[reference],
                                     convention=convention)["exact_match"]
        assert score == expected, (convention, prediction, reference)


# The paper's BiSECT exact match: its script's strip(), then evaluate's exact_match(ignore_case=True,
# ignore_punctuation=True, ignore_numbers=True): lowercase, drop string.punctuation, drop 0-9.
LOOSE_CASES = [
    ("Una frase.", "una frase", 100),
    ("5 frases.", "3 Frases", 100),                   # digits dropped: " frases" both
    ("Uno <SPLIT> Dos.", "uno <SPLIT> dos", 100),      # < and > are ASCII punctuation
    ("¿Dónde?", "Dónde", 0),                           # ¿ is not
    ("Dónde", "donde", 0),                             # accents count
    ("a, b", "a , b", 0),                              # "a b" vs "a  b": spaces are kept
    ("  Una frase ", "una frase", 100),                # stripped, as the script did
    ("Una  frase", "una frase", 0),                    # inner whitespace counts
]


@pytest.mark.parametrize("prediction, reference, expected", LOOSE_CASES)
def test_loose_exact_match_is_evaluates_with_case_punctuation_and_digits_ignored(
        prediction, reference, expected):
    score = ExactMatch().compute(predictions=[prediction], references=[reference],
                                 convention="loose")["exact_match"]
    assert score == expected


def test_the_paper_dialogue_f1_counts_membership_on_whitespace_tokens():
    def f1(prediction, reference):
        return TokenF1().compute(predictions=[prediction], references=[reference],
                                 convention="whitespace-membership")["token_f1"]

    assert f1("sí sí sí", "sí") == 100.0                    # no clipping
    assert f1("Hola, ¿qué tal?", "hola qué tal") == 0.0     # case and punctuation stay on
    # "el" is in both: precision 1/3, recall 1/2 -> F1 0.4
    assert f1("el gato negro", "el perro") == pytest.approx(40.0)
    assert f1("", "hola") == 0.0 and f1("hola", "") == 0.0  # the script divided by zero


def test_the_score_command_offers_every_convention():
    from seq2seq_es.metrics import answers, cli

    assert cli.EM_CONVENTION_CHOICES == answers.CONVENTIONS
    assert cli.F1_CONVENTION_CHOICES == answers.F1_CONVENTIONS


def test_token_f1_conventions_follow_the_official_rules():
    def f1(prediction, reference, convention):
        return TokenF1().compute(predictions=[prediction], references=[reference],
                                 convention=convention)["token_f1"]

    # squad keeps "el": 3 of 4 predicted tokens match, all 3 reference tokens found.
    assert f1("el museo del Prado", "Museo del Prado.", "squad") == pytest.approx(100 * 6 / 7)
    assert f1("el museo del Prado", "Museo del Prado.", "mlqa-es") == 100.0
    # mlqa-es splits on whitespace after dropping punctuation: "1936—1939" becomes one token.
    assert f1("1936—1939", "1936 1939", "mlqa-es") == 0.0
    assert f1("1936 — 1939", "1936 1939", "mlqa-es") == 100.0
    # words (the dialogue default) splits at punctuation and keeps articles.
    assert f1("1936—1939", "1936 1939", "words") == 100.0
    assert f1("el gato", "gato", "words") == pytest.approx(100 * 2 / 3)
    # Only articles: nothing left to compare scores 0, as in the scripts.
    assert f1("el", "la", "mlqa-es") == 0.0


def test_unknown_answer_convention_is_named():
    with pytest.raises(UnknownNameError, match="convention"):
        ExactMatch().compute(predictions=["a"], references=["a"], convention="english")
    with pytest.raises(UnknownNameError, match="convention"):
        TokenF1().compute(predictions=["a"], references=["a"], convention="strict")


def test_score_command_takes_the_qa_conventions(tmp_path, capsys):
    predictions, references = tmp_path / "pred.txt", tmp_path / "ref.txt"
    predictions.write_text("¿El Prado?\nmuseo del prado\n", encoding="utf-8")
    references.write_text("Prado\nel Museo del Prado\n", encoding="utf-8")
    argv = ["--metric", "exact_match", "--metric", "token_f1", "--predictions", str(predictions),
            "--references", str(references)]
    assert score_main(argv) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["exact_match"] == 0.0
    assert score_main(argv + ["--em-convention", "mlqa-es", "--f1-convention", "mlqa-es"]) == 0
    assert json.loads(capsys.readouterr().out) == {"exact_match": 100.0, "token_f1": 100.0}
    # --task scores as that task's runs do: its metrics and conventions; a flag still wins
    files = ["--predictions", str(predictions), "--references", str(references)]
    assert score_main(["--task", "sqac", *files]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert set(scored) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "token_f1"}
    assert (scored["exact_match"], scored["token_f1"]) == (100.0, 100.0)
    assert score_main(["--task", "sqac", "--metric", "exact_match", "--em-convention", "strict",
                       *files]) == 0
    assert json.loads(capsys.readouterr().out) == {"exact_match": 0.0}
    assert score_main(files) == 2
    assert "--metric NAME" in capsys.readouterr().err


# Values of Hugging Face evaluate's sari (the published algorithm with its lowercase + 13a
# tokenization) on these cases; the first is the example of its documentation.
SARI_PAPER_CASES = [
    ("About 95 species are currently accepted .", "About 95 you now get in .",
     ["About 95 species are currently known .", "About 95 species are now accepted .",
      "95 species are now accepted ."], 26.953601953601954),
    ("¿Qué pasó en Madrid, dijo el alcalde, que llegó tarde?",
     "¿Qué pasó en Madrid? <SPLIT> El alcalde llegó tarde.",
     ["¿Qué pasó en Madrid?, dijo el alcalde. <SPLIT> Él llegó tarde."], 64.43121693121692),
    ("La canción, que ganó el premio, fue compuesta en 1990.",
     "La canción ganó el premio. <SPLIT> Fue compuesta en 1990.",
     ["La canción ganó el premio. <SPLIT> La canción fue compuesta en 1990.",
      "La canción fue compuesta en 1990. <SPLIT> Ganó el premio."], 89.71428571428571),
]


@pytest.mark.parametrize("source, prediction, references, expected", SARI_PAPER_CASES)
def test_sari_paper_mode_equals_evaluates_sari_on_raw_text(source, prediction, references,
                                                           expected):
    scores = compute_metrics(["sari"], [prediction], [references], sources=[source],
                             mode="paper")
    assert scores["sari"] == pytest.approx(expected, abs=1e-9)


def test_paper_sari_reads_a_decomposed_source_as_the_composed_one():
    # Sources were not NFC-normalised: paper SARI (13a, code points) scored an NFD-typed
    # "canción" in the source as an edit, 90.55 instead of evaluate's 89.71.
    source, prediction, references, expected = SARI_PAPER_CASES[2]
    decomposed = unicodedata.normalize("NFD", source)
    assert decomposed != source
    scores = compute_metrics(["sari"], [prediction], [references], sources=[decomposed],
                             mode="paper")
    assert scores["sari"] == pytest.approx(expected, abs=1e-9)


def test_sari_spanish_mode_keeps_inverted_marks_apart_unlike_paper_mode():
    source, prediction, references, paper_value = SARI_PAPER_CASES[1]
    spanish = compute_metrics(["sari"], [prediction], [references], sources=[source])["sari"]
    assert spanish != pytest.approx(paper_value)
    assert Sari().compute(predictions=[prediction], references=[references], sources=[source],
                          mode="paper")["sari"] == pytest.approx(paper_value, abs=1e-9)


ROUGE_CASES = (
    ["La oposición votó en contra. El gobierno aprobó la ley.", "Llueve en Madrid.",
     "El Real Madrid ganó la final.\nEl público celebró en Cibeles.", "Una canción nueva."],
    [["El gobierno aprobó la ley. La oposición votó en contra."], ["Hoy llueve en Madrid."],
     ["El Madrid ganó la final.\nMiles celebraron en Cibeles."], ["Una nueva canción."]],
)


def _reference_rouge(predictions, references, seed=None):
    """rouge_score itself (what evaluate's rouge calls), per example and aggregated."""
    from rouge_score import rouge_scorer, scoring
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per_example = [scorer.score_multi(refs, pred) for pred, refs in zip(predictions, references)]
    if seed is None:
        return {t: 100 * sum(s[t].fmeasure for s in per_example) / len(per_example)
                for t in ROUGE_TYPES}
    aggregator = scoring.BootstrapAggregator()
    for scores in per_example:
        aggregator.add_scores(scores)
    np.random.seed(seed)
    result = aggregator.aggregate()
    return {t: 100 * result[t].mid.fmeasure for t in ROUGE_TYPES}


def test_rouge_paper_mode_equals_rouge_score_on_the_same_strings():
    predictions, references = ROUGE_CASES
    ours = Rouge().compute(predictions=predictions, references=references, mode="paper")
    assert ours == pytest.approx(_reference_rouge(predictions, references), abs=1e-9)
    # Re-splitting sentences (as the paper's scripts did with punkt) changes only ROUGE-Lsum.
    resplit = Rouge().compute(predictions=predictions, references=references, mode="paper",
                              split_sentences=True)
    assert resplit["rougeL"] == ours["rougeL"] and resplit["rougeLsum"] != ours["rougeLsum"]


def test_rouge_bootstrap_is_rouge_scores_mid_under_a_fixed_seed():
    # Eleven examples of uneven quality, so that the bootstrap median is not the mean.
    words = "el consejo de ministros aprobó ayer la reforma de las pensiones".split()
    predictions = [" ".join(words[:k]) for k in range(1, 12)]
    references = [[" ".join(words)]] * len(predictions)
    state = np.random.get_state()
    ours = Rouge().compute(predictions=predictions, references=references, mode="paper",
                           aggregate="bootstrap", bootstrap_seed=7)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global generator untouched
    assert ours == pytest.approx(_reference_rouge(predictions, references, seed=7), abs=1e-9)
    again = Rouge().compute(predictions=predictions, references=references, mode="paper",
                            aggregate="bootstrap", bootstrap_seed=7)
    assert again == ours
    mean = Rouge().compute(predictions=predictions, references=references, mode="paper")
    assert ours != mean and ours == pytest.approx(mean, abs=15)
    with pytest.raises(UnknownNameError, match="aggregation"):
        Rouge().compute(predictions=predictions, references=references, aggregate="median")


def test_chrf_equals_sacrebleu_and_credits_word_endings():
    predictions = ["Los niños cantaban canciones.", "O governo aprovou a lei."]
    references = [["Los niños cantan canciones."], ["O governo aprovou ontem a lei."]]
    expected = sacrebleu.corpus_chrf(predictions, [[r[0] for r in references]]).score
    assert compute_metrics(["chrf"], predictions, references)["chrf"] == pytest.approx(
        expected, abs=1e-9)
    # "cantaban" vs "cantan": no BLEU unigram, but shared characters for chrF.
    one = compute_metrics(["chrf", "bleu"], ["cantaban"], ["cantan"])
    assert one["bleu"] == 0.0 and one["chrf"] > 30


def test_chrf_word_order_2_is_sacrebleus_chrf_plus_plus():
    # word_order was not passed to sacreBLEU: asking for chrF++ reported plain chrF under its name.
    from sacrebleu.metrics import CHRF

    predictions = ["Los niños cantaban canciones.", "O governo aprovou a lei."]
    references = [["Los niños cantan canciones."], ["O governo aprovou ontem a lei."]]
    streams = [[r[0] for r in references]]
    plus_plus = CHRF(word_order=2).corpus_score(predictions, streams).score
    assert plus_plus == pytest.approx(77.91318739676417, abs=1e-9)
    assert plus_plus != pytest.approx(CHRF().corpus_score(predictions, streams).score, abs=0.1)
    scores = compute_metrics(["chrf"], predictions, references, options={"chrf": {"word_order": 2}})
    assert scores["chrf"] == pytest.approx(plus_plus, abs=1e-9)


def test_score_command_rouge_switches(tmp_path, capsys):
    predictions, references = tmp_path / "pred.txt", tmp_path / "ref.txt"
    predictions.write_text("el público aplaudió\n", encoding="utf-8")
    references.write_text("el publicó aplaudía\n", encoding="utf-8")
    argv = ["--metric", "rouge", "--predictions", str(predictions), "--references",
            str(references)]
    assert score_main(argv) == 0
    stemmed = json.loads(capsys.readouterr().out)
    assert score_main(argv + ["--no-stem"]) == 0
    unstemmed = json.loads(capsys.readouterr().out)
    # Snowball folds the accents of "público"/"publicó" and stems "aplaudió"/"aplaudía".
    assert stemmed["rouge1"] == 100.0 and unstemmed["rouge1"] == pytest.approx(100 / 3)
    assert score_main(argv + ["--mode", "paper", "--aggregate", "bootstrap"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(ROUGE_TYPES)
    assert score_main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--no-stem" in help_text and "accents" in help_text and "13a" in help_text


@pytest.mark.parametrize("metric, key, options", [
    ("bleu", "bleu", {}), ("chrf", "chrf", {}), ("rouge", "rouge1", {}),
    ("exact_match", "exact_match", {"convention": "mlqa-es"}),
    ("token_f1", "token_f1", {"convention": "squad"})])
@pytest.mark.parametrize("mode", ["spanish", "paper"])
def test_decomposed_accents_score_as_the_composed_letters_in_every_metric(metric, key, options,
                                                                          mode):
    # "canción" with a combining accent (NFD) was 0 under mlqa-es EM and BLEU 10.7 against the
    # same sentence composed: BLEU, chrF, the QA conventions and paper modes compare code points.
    composed = "La canción terminó en España con la lágrima."
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    for prediction, reference in ((decomposed, composed), (composed, decomposed)):
        scores = compute_metrics([metric], [prediction], [reference], mode=mode,
                                 options={metric: options} if options else None)
        assert scores[key] == pytest.approx(100.0), (metric, mode, scores)


@pytest.mark.parametrize("name", ["rouge", "bleu", "chrf", "sari", "exact_match", "meteor",
                                  "token_f1"])
def test_the_evaluate_classes_score_decomposed_accents_as_compute_metrics_does(name):
    # The classes called each module's compute on the raw strings: BLEU 42.7, chrF 79.2 and
    # paper SARI 17.1 for "canción" typed with a combining accent, 100 from compute_metrics.
    from seq2seq_es.metrics.evaluate_metrics import METRICS

    composed = "la canción de amor eterno"
    decomposed = unicodedata.normalize("NFD", composed)
    mode = {"mode": "paper"} if name in ("rouge", "sari") else {}
    sources = {"sources": [decomposed]} if name == "sari" else {}
    for prediction, reference in ((decomposed, composed), (composed, [decomposed])):
        by_class = METRICS[name]().compute(predictions=[prediction], references=[reference],
                                           **sources, **mode)
        by_function = compute_metrics([name], [composed], [composed],
                                      sources=[composed] if sources else None, **mode)
        assert by_class == pytest.approx(by_function), (name, by_class, by_function)


def test_spanish_rouge_stems_only_words_over_three_characters_as_rouge_score_does():
    # Snowball strips acute accents, so stemming every word scored "Él sí sabe qué más dé"
    # 100 against "El si sabe que mas de" (6 words whose accent is the difference).
    accented = "Él sí sabe qué más dé"
    plain = "El si sabe que mas de"
    assert compute_metrics(["rouge"], [accented], [plain])["rouge1"] == pytest.approx(100 / 6)
    assert compute_metrics(["rouge"], ["publicó canciones"], ["público canción"])["rouge1"] == 100.0
    assert compute_metrics(["rouge"], ["publicó canciones"], ["público canción"],
                           options={"rouge": {"use_stemmer": False}})["rouge1"] == 0.0


@pytest.mark.parametrize("name", ["rouge", "bleu", "chrf", "sari", "exact_match", "meteor",
                                  "token_f1"])
def test_every_metric_refuses_an_empty_reference_list_alike(name):
    # token_f1, rouge and meteor raised "max() arg is an empty sequence"; exact match scored 0.
    from seq2seq_es.errors import DataError
    from seq2seq_es.metrics.scoring import METRIC_FUNCTIONS

    arguments = {"sources": ["hola"]} if name == "sari" else {}
    with pytest.raises(DataError, match="example 1: a reference must be a string or a non-empty"):
        METRIC_FUNCTIONS[name](["hola", "adiós"], [["hola"], []], **arguments)


# --- behaviours the mutation audit found untested --------------------------------------------

def test_rouge_takes_the_reference_with_the_best_f_measure_not_the_best_recall():
    # A short reference that the prediction covers wholly has recall 1 but a poor F: chosen by
    # recall, a multi-reference score dropped from 92.31 to 28.57.
    from seq2seq_es.metrics.rouge import compute

    prediction = "el gato come pescado fresco hoy"
    references = [["gato", "el gato negro come pescado fresco hoy"]]
    scores = compute([prediction], references, use_stemmer=False, with_precision_recall=True)
    # second reference: 6 of 7 words (P 1, R 6/7, F 12/13); the first: P 1/6, R 1, F 2/7
    assert scores["rouge1"] == pytest.approx(100 * 12 / 13)
    assert scores["rouge1_precision"] == pytest.approx(100.0)
    assert scores["rouge1_recall"] == pytest.approx(100 * 6 / 7)
    # bigrams: 4 of the prediction's 5 and the reference's 6
    assert scores["rouge2"] == pytest.approx(100 * 2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))


def test_rouge_bootstrap_reports_precision_and_recall_each_under_its_own_name():
    # With aggregate=bootstrap, rouge1_precision showed the recall.
    from seq2seq_es.metrics.rouge import compute

    scores = compute(["el gato"], ["el gato negro"], use_stemmer=False,
                     with_precision_recall=True, aggregate="bootstrap")
    assert scores["rouge1_precision"] == pytest.approx(100.0)
    assert scores["rouge1_recall"] == pytest.approx(100 * 2 / 3)
    assert scores["rouge1"] == pytest.approx(80.0)
    assert scores["rouge2_precision"] == pytest.approx(100.0)
    assert scores["rouge2_recall"] == pytest.approx(50.0)


def test_rouge_bootstrap_leaves_numpys_global_generator_where_it_was():
    # Scoring during training must not reseed numpy: the run's later random draws (data
    # augmentation, user code) would repeat the same numbers after every evaluation.
    from seq2seq_es.metrics.rouge import compute

    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    compute(["el gato", "un perro"], ["el gato negro", "el perro"], aggregate="bootstrap",
            bootstrap_seed=7)
    compute_metrics(["rouge"], ["el gato"], ["el gato negro"],
                    options={"rouge": {"aggregate": "bootstrap"}})
    assert np.random.rand(3).tolist() == expected.tolist()


def test_rouge_paper_mode_honours_use_stemmer_false():
    # Paper mode forced Porter stemming: "gatos" matched "gato" although the user turned
    # stemming off (33.33 instead of 0).
    from seq2seq_es.metrics.rouge import compute

    unstemmed = compute(["los gatos corren"], ["el gato corre"], mode="paper", use_stemmer=False)
    assert unstemmed == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}
    stemmed = compute(["los gatos corren"], ["el gato corre"], mode="paper", use_stemmer=True)
    assert stemmed["rouge1"] == pytest.approx(100 / 3)   # gatos -> gato
    reference = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    assert reference.score("el gato corre", "los gatos corren")["rouge1"].fmeasure == 0.0


def test_bleu_uses_the_tokenizer_it_is_given():
    # tokenize="intl" splits "¿" from the word after it; ignored, every BLEU was 13a's.
    prediction = ["¿Vienes mañana a la fiesta de Juan?"]
    reference = ["Vienes mañana a la fiesta de Juan?"]
    thirteen_a = compute_metrics(["bleu"], prediction, reference)["bleu"]
    intl = compute_metrics(["bleu"], prediction, reference,
                           options={"bleu": {"tokenize": "intl"}})["bleu"]
    # 13a: "¿Vienes" is one token: n-gram precisions 7/8, 6/7, 5/6, 4/5
    assert thirteen_a == pytest.approx(100 * (1 / 2) ** 0.25)
    # intl: 9 tokens against 8: 8/9, 7/8, 6/7, 5/6, no brevity penalty
    assert intl == pytest.approx(100 * (5 / 9) ** 0.25)
    assert intl == pytest.approx(
        sacrebleu.corpus_bleu(prediction, [reference], tokenize="intl").score)
    assert thirteen_a == pytest.approx(sacrebleu.corpus_bleu(prediction, [reference]).score)


@pytest.mark.parametrize("article", ["el", "la", "los", "las", "un", "una", "unos", "unas"])
def test_mlqa_es_answers_drop_every_spanish_article(article):
    # MLQA's Spanish evaluation removes all eight articles: one left in scored a right
    # answer 0 ("unos libros" against "libros").
    from seq2seq_es.metrics.exact_match import compute as exact_match
    from seq2seq_es.metrics.token_f1 import compute as token_f1

    prediction = f"{article} libros"
    assert exact_match([prediction], ["libros"], convention="mlqa-es")["exact_match"] == 100
    assert exact_match([prediction.capitalize()], ["libros"],
                       convention="mlqa-es")["exact_match"] == 100
    assert token_f1([prediction], ["libros"], convention="mlqa-es")["token_f1"] == 100


def test_meteor_local_search_breaks_crossing_ties_by_fewer_chunks(monkeypatch):
    # Beyond EXHAUSTIVE_LIMIT the search must still prefer one chunk to two at equal
    # crossings, or long texts score lower than the exhaustive search would give them.
    from seq2seq_es.metrics import meteor

    prediction, reference = ["no", "el"], "sí no el el la el el".split()
    exhaustive = sentence_meteor(prediction, reference)
    # 2 matches: P 1, R 2/7, Fmean = (2/7) / (0.9 + 0.1 * 2/7) = 4/13; one chunk: 1 - 0.5/8
    assert exhaustive == pytest.approx((4 / 13) * (1 - 0.5 * (1 / 2) ** 3))
    monkeypatch.setattr(meteor, "EXHAUSTIVE_LIMIT", 0)
    assert align(prediction, reference) == [(0, 1), (1, 2)]
    assert sentence_meteor(prediction, reference) == pytest.approx(exhaustive)


def test_an_ellipsis_after_an_initial_still_ends_the_sentence():
    # "C..." is a trailing ellipsis, not the initial "C.": taken as one, two sentences were
    # joined (ROUGE-Lsum and SARI's split markers see sentences).
    assert split_sentences("Tomó vitamina C... Después durmió.") == [
        "Tomó vitamina C...", "Después durmió."]
    assert split_sentences("Habló con el Sr... Nadie contestó.") == [
        "Habló con el Sr...", "Nadie contestó."]
