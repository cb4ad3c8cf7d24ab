"""`seq2seq-es score` and `compute_metrics` import only what the metric needs; `train` says a
config mistake before importing the libraries of training.

`evaluate` imports transformers, torch and datasets (tens of seconds on a loaded CI machine);
scoring two lines must not pay for them. Each case runs the real command in a fresh
interpreter (`seq2seq_es.cli.main(["score", ...])`, the path of `seq2seq-es score`) and reads
which heavy modules ended up in sys.modules: behaviour, not wall-clock time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("evaluate", "torch", "transformers", "datasets")

PREDICTIONS = ["La canción española ganó el premio.", "El gato duerme en casa."]
REFERENCES = ["La canción española obtuvo el premio.", "El perro duerme en la casa."]
SOURCES = ["La canción de España ganó un premio.", "Un gato duerme en su casa."]

CHECK = """
import json, sys
from seq2seq_es.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def run_score(tmp_path, *args: str) -> tuple[int, list[str], dict]:
    files = {}
    for name, lines in (("p", PREDICTIONS), ("r", REFERENCES), ("s", SOURCES)):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, "score", "--predictions", str(files["p"]),
         "--references", str(files["r"]), "--sources", str(files["s"]), *args],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *scores_lines, last = proc.stdout.strip().splitlines()
    report = json.loads(last)
    return report["code"], report["heavy"], json.loads("\n".join(scores_lines))


@pytest.mark.parametrize("args", [
    ["--metric", "rouge"],
    ["--metric", "rouge", "--mode", "paper", "--aggregate", "bootstrap", "--split-sentences"],
    ["--metric", "bleu"],
    ["--metric", "chrf"],
    ["--metric", "sari"],
    ["--metric", "sari", "--mode", "paper"],
    ["--metric", "exact_match", "--em-convention", "mlqa-es"],
    ["--metric", "meteor"],
    ["--metric", "token_f1", "--f1-convention", "mlqa-es"],
], ids=lambda args: "-".join(a.lstrip("-") for a in args))
def test_score_imports_no_heavy_library(tmp_path, args):
    code, heavy, scores = run_score(tmp_path, *args)
    assert code == 0
    assert heavy == [], f"score {' '.join(args)} imported {heavy}"
    assert scores and all(0.0 <= value <= 100.0 for value in scores.values())


def test_compute_metrics_and_the_metric_modules_do_not_import_evaluate():
    """The library path (`compute_metrics`, as evaluation.py calls it) is as light as the CLI;
    the evaluate-style classes still import `evaluate` when asked for."""
    code = """
import json, sys
from seq2seq_es.metrics import compute_metrics, METRIC_FUNCTIONS
from seq2seq_es.metrics.rouge import compute
scores = compute_metrics(list(METRIC_FUNCTIONS), ["a b c"], ["a b d"], sources=["a b"])
light = sorted(m for m in %r if m in sys.modules)
from seq2seq_es.metrics.rouge import Rouge
import evaluate
print(json.dumps({"light": light, "n": len(scores), "is_metric": issubclass(Rouge, evaluate.Metric),
                  "same": Rouge().compute(predictions=["a b c"], references=["a b d"])
                          == compute(["a b c"], ["a b d"])}))
""" % (HEAVY,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"light": [], "n": 10, "is_metric": True, "same": True}


def test_a_train_config_mistake_is_refused_before_the_trainer_is_imported():
    """A mistake in `train`'s config is said before torch, transformers, DeepSpeed and the
    trainer are imported (seconds on a loaded machine, under a launcher on every rank): the config is
    composed first."""
    code = """
import json, sys
from seq2seq_es.cli import main
code = main(["train", "--task", "titulares", "--model", "barto-tiny",
             "--data.source_column", "articulo"])
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (("torch", "transformers", "deepspeed", "datasets", "seq2seq_es.engine.trainer"),)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "config key 'data.target_column'" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 2, "heavy": []}
    # what lets train skip that import: without accelerate's variables it reads nothing
    from seq2seq_es.engine.distributed import launcher_overrides

    assert launcher_overrides({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                               "MASTER_ADDR": "127.0.0.1", "SLURM_PROCID": "0"}) == {}
