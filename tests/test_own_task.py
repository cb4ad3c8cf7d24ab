"""A task of the user's own (data.task outside the registry, with data.source_column,
data.target_column and data.metrics): a researcher's own dataset trains, validates on its
metrics, is scored on its test file, predicts and is collected into a table like a paper task."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine_runs import REPO, base_args, demo_files, run, subprocess_env
from seq2seq_es.config import compose
from seq2seq_es.errors import ConfigError, DataError, UnknownNameError
from seq2seq_es.metrics import METRIC_FUNCTIONS, compute_metrics
from seq2seq_es.tasks import OWN_KIND, load_examples, task_for
from seq2seq_es.tasks.registry import MAIN_SCORES

OWN = {"data.source_column": "articulo", "data.target_column": "titular"}
ROWS = [{"articulo": "Llueve en Madrid desde el lunes.", "titular": "Llueve en Madrid."},
        {"articulo": "Sale el sol en Sevilla.", "titular": "Sale el sol."}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")
    return str(path)


def test_an_own_task_is_composed_from_its_keys_without_paper_defaults():
    cfg = compose("titulares", "barto-tiny", overrides={**OWN, "data.metrics": "bleu,chrf"})
    task = task_for(cfg.data)
    assert (task.name, task.kind, task.columns) == ("titulares", OWN_KIND, ("articulo", "titular"))
    assert task.metrics == ("bleu", "chrf") and task.main_metric == "bleu"
    assert task.hub_id == "" and task.defaults == {}
    # no registry row under it: the dataclass defaults, not mlsum's 1024 / 48 / seed 42 row
    assert (cfg.data.max_source_length, cfg.data.max_target_length) == (512, 128)
    assert cfg.train.output_dir == "runs/barto-tiny-titulares"
    assert task_for(compose("titulares", "barto-tiny", overrides=OWN).data).metrics == ("rouge",)
    assert task_for(compose("titulares", "barto-tiny", overrides=OWN).data).main_metric == "rougeL"


def test_every_metric_has_a_main_score_among_its_outputs():
    assert set(MAIN_SCORES) == set(METRIC_FUNCTIONS)
    for name, main in MAIN_SCORES.items():
        assert main in compute_metrics([name], ["hola"], [["hola"]], sources=["hola"])


@pytest.mark.parametrize("task, overrides, key, says", [
    ("titulares", {}, None, "unknown task 'titulares'; known tasks: bisect, "),
    ("mlsun", {}, None, "did you mean 'mlsum' or 'xlsum'?"),
    ("titulares", {"data.source_column": "articulo"}, "data.target_column",
     "is needed with the other one for a task of your own (titulares)"),
    ("titulares", {**OWN, "data.target_column": "articulo"}, "data.target_column",
     "is the source column too (articulo)"),
    ("titulares", {**OWN, "data.metrics": "blue"}, "data.metrics",
     "unknown metric 'blue'; did you mean 'bleu'?"),
    ("titulares", {**OWN, "data.metrics": "bleu,bleu"}, "data.metrics", "names a metric twice"),
    ("mis/titulares", OWN, "data.task", "your own task's name takes letters"),
    ("mlsum", OWN, "data.source_column", "data.task mlsum is a registry task: rename its "
                                         "columns with data.columns"),
    ("mlsum", {"data.metrics": "bleu"}, "data.metrics", "mlsum's are the paper's (rouge)"),
    ("titulares", {**OWN, "data.columns": "cuerpo=texto"}, "data.columns",
     "'texto' is no column of task titulares; its columns: articulo, titular"),
    ("titulares", {**OWN, "data.hub_config": "es"}, "data.hub_config",
     "is the config of data.hub_dataset, which is not set"),
    ("mlsum", {"data.hub_dataset": "yo/titulares"}, "data.hub_dataset",
     "data.task mlsum is a registry task (reciTAL/mlsum)"),
    ("MLSUM", OWN, "data.task", "MLSUM differs from the registry task mlsum only in case"),
    ("titulares", {**OWN, "data.metrics": ","}, "data.metrics", "names no metric (',')"),
    ("titulares", {**OWN, "data.metrics": "rouge,,bleu"}, "data.metrics",
     "has an empty name between commas ('rouge,,bleu'); did you mean 'rouge,bleu'?"),
    ("titulares", {**OWN, "data.metrics": "rouge bleu"}, "data.metrics",
     "separates metrics by commas, not spaces ('rouge bleu'); did you mean 'rouge,bleu'?"),
    ("titulares", {**OWN, "data.metrics": "rouge bleu,chrf"}, "data.metrics",
     "separates metrics by commas, not spaces ('rouge bleu,chrf'); did you mean "
     "'rouge,bleu,chrf'?"),
])
def test_an_incomplete_or_mixed_own_task_is_refused_by_its_key(task, overrides, key, says):
    with pytest.raises((ConfigError, UnknownNameError)) as error:
        compose(task, "barto-tiny", overrides=overrides)
    assert says in str(error.value)
    if key is None:  # an unknown name says how to define one's own
        assert "for a task of your own, set data.source_column and data.target_column" in \
            str(error.value)
    else:
        assert error.value.key == key


def test_an_own_task_reads_its_columns_and_refuses_a_split_without_a_file(tmp_path):
    cfg = compose("titulares", "barto-tiny", overrides=OWN)
    task = task_for(cfg.data)
    data = _jsonl(tmp_path / "train.jsonl", ROWS)
    examples, report = load_examples(task, "train", data_files={"train": data},
                                     cache_dir=str(tmp_path / "cache"))
    assert [(e["source"], e["target"]) for e in examples] == [
        (row["articulo"], row["titular"]) for row in ROWS]
    assert report.examples == 2
    # data.columns renames onto the own task's columns as onto a registry task's
    renamed = _jsonl(tmp_path / "renamed.jsonl", [{"cuerpo": r["articulo"], "titular": r["titular"]}
                                                   for r in ROWS])
    examples, _ = load_examples(task, "train", data_files={"train": renamed},
                                columns={"cuerpo": "articulo"}, cache_dir=str(tmp_path / "cache"))
    assert examples[1]["source"] == ROWS[1]["articulo"]
    # a file of other names: the keys that name them, not data.columns' renames to the task's
    with pytest.raises(DataError) as error:
        load_examples(task, "train", data_files={"train": renamed},
                      cache_dir=str(tmp_path / "cache"))
    assert str(error.value).endswith(
        "columns found: cuerpo, titular; your own task reads the columns data.source_column "
        "and data.target_column name: set them to the file's")
    with pytest.raises(DataError) as error:
        load_examples(task, "validation", data_files={"train": data},
                      cache_dir=str(tmp_path / "cache"))
    assert str(error.value) == ("task titulares is your own: it reads local files and none is "
                                "given for its validation split (data.validation_file), nor a "
                                "data.hub_dataset")


def test_an_own_task_reads_a_hub_dataset_with_the_usual_splits(tmp_path, monkeypatch):
    # datasets reads a local folder as it reads a hub repository (a snapshot on disk): the same
    # load_dataset(id, config, split=...) call, without the network.
    repo = tmp_path / "titulares-hub"
    repo.mkdir()
    for split in ("train", "validation"):
        _jsonl(repo / f"{split}.jsonl", ROWS)
    cfg = compose("titulares", "barto-tiny", overrides={**OWN, "data.hub_dataset": str(repo)})
    task = task_for(cfg.data)
    assert (task.hub_id, task.hub_config) == (str(repo), None)
    examples, report = load_examples(task, "validation", cache_dir=str(tmp_path / "cache"))
    assert [e["target"] for e in examples] == [row["titular"] for row in ROWS]
    assert report.origin == f"hub {repo} split validation"
    with pytest.raises(DataError) as error:  # no test split there: what to do instead
        load_examples(task, "test", cache_dir=str(tmp_path / "cache"))
    assert "Unknown split" in str(error.value)
    assert str(error.value).endswith("give a local file (jsonl/json/csv/parquet) with the columns "
                                     "articulo, titular via --data.test_file ("
                                     "in training, or --train.eval_test false: no test scores)")
    # a relative folder is made absolute, as data files are (config.yaml is read elsewhere); a
    # hub id stays as given
    monkeypatch.chdir(tmp_path)
    assert compose("titulares", "barto-tiny", overrides={
        **OWN, "data.hub_dataset": "titulares-hub"}).data.hub_dataset == str(repo)
    assert compose("titulares", "barto-tiny", overrides={
        **OWN, "data.hub_dataset": "yo/titulares"}).data.hub_dataset == "yo/titulares"


def _own_files(folder, files):
    """The demo data under the own task's column names; the test split is the validation's."""
    renamed = {}
    for split, path in {**files, "test": files["validation"]}.items():
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        renamed[split] = _jsonl(folder / f"{split}.jsonl", [
            {"articulo": row["text"], "titular": row["summary"]} for row in rows])
    return renamed


def _own_args(files, out, extra=()):
    args = base_args(files, out, steps=2, extra=[
        "--data.source_column", "articulo", "--data.target_column", "titular",
        "--data.metrics", "bleu,chrf", "--train.eval_at_end", "true", *extra])
    args[args.index("--task") + 1] = "titulares"
    return args


def test_a_run_of_an_own_task_without_its_validation_file_stops_before_loading(tmp_path):
    files = _own_files(tmp_path, demo_files(tmp_path / "data", train_size=8))
    args = _own_args(files, tmp_path / "run")
    at = args.index("--data.validation_file")
    del args[at:at + 2]
    result = run("none", 1, args, check=False)
    assert result.returncode == 2
    assert ("config key 'data.validation_file': your own task titulares reads local files (it "
            "has no data.hub_dataset): pass --data.validation_file FILE") in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_own_task_trains_scores_predicts_and_is_collected(tmp_path):
    files = _own_files(tmp_path, demo_files(tmp_path / "data", train_size=16))
    out = tmp_path / "run"
    run("none", 1, _own_args(files, out, extra=["--data.test_file", files["test"]]))

    results = json.loads((out / "final_results.json").read_text())
    assert (results["task"], results["main_metric"]) == ("titulares", "bleu")
    for split in ("validation", "test"):
        assert {"bleu", "chrf"} <= set(results[split]) and "rougeL" not in results[split]
    saved = (out / "config.yaml").read_text()
    assert "source_column: articulo" in saved and "metrics: bleu,chrf" in saved

    # predict reads rows of the own task's data by its columns, from the run folder's config
    predictions = tmp_path / "pred.jsonl"
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "seq2seq_es", "predict", str(out), "--input",
                           files["test"], "--output", str(predictions)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    sources = [json.loads(line)["articulo"] for line in open(files["test"], encoding="utf-8")]
    written = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [row["source"] for row in written] == sources

    # final/ copied without its run (shared, uploaded): its card names the own task's columns,
    # so --model alone predicts its rows and scores its test file as the run did
    import shutil
    copied = shutil.copytree(out / "final", tmp_path / "shared" / "model")
    from_copy = tmp_path / "pred_copy.jsonl"
    done = subprocess.run([sys.executable, "-m", "seq2seq_es", "predict", str(copied),
                           "--model", "barto-tiny", "--input", files["test"], "--output",
                           str(from_copy)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert from_copy.read_text() == predictions.read_text()
    assert f"note: {copied} was trained on titulares" in done.stderr
    done = subprocess.run([sys.executable, "-m", "seq2seq_es", "evaluate", str(copied),
                           "--model", "barto-tiny", "--split", "test", "--data.test_file",
                           files["test"], "--data.max_target_length", "32", "--output-dir",
                           str(tmp_path / "ev")], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["results"]
    assert {key: scores[f"test/{key}"] for key in ("bleu", "chrf")} == \
        {key: results["test"][key] for key in ("bleu", "chrf")}

    # collect lays the run out like a paper task, under its own metrics
    done = subprocess.run([sys.executable, "-m", "seq2seq_es", "slurm", "collect", str(out),
                           "--split", "test"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "titulares" in done.stdout and "bleu" in done.stdout
    assert f"{results['test']['bleu']:.2f}" in done.stdout


def test_an_exported_folders_card_names_its_own_task_for_inference(tmp_path):
    # A copied final/ or an export of an own task: predict --model M read its rows as mlsum's
    # ("missing field 'source'") and --task titulares was unknown, while the card said --model
    # reads the task from it (an audit). The card now names the task's keys, read back here.
    from seq2seq_es.engine.hub import write_export_card
    from seq2seq_es.engine.inference import (SavedModel, exported_inputs, exported_task,
                                             inference_config)

    own = {**OWN, "data.metrics": "bleu,chrf", "data.max_source_length": "64"}
    cfg = compose("titulares", "barto-tiny", overrides=own)
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    write_export_card(folder, cfg, tmp_path / "run" / "checkpoints" / "step_00000004")
    assert exported_task(folder) == "titulares"
    assert exported_inputs(folder) == {**own, "data.max_source_length": "64"}
    saved = SavedModel("hf", folder, None, "exported")
    read = inference_config(saved, model="barto-tiny", allow_model=True)
    assert task_for(read.data).columns == ("articulo", "titular")
    assert (read.data.metrics, read.data.max_source_length) == ("bleu,chrf", 64)
    # --task another: the card's columns are not carried into it
    assert inference_config(saved, task="mlsum", model="barto-tiny").data.source_column == ""
    # a registry task's card names no such keys
    write_export_card(folder, compose("mlsum", "barto-tiny"), tmp_path / "step_00000004")
    assert exported_task(folder) == "mlsum" and "data.source_column" not in exported_inputs(folder)
    # a model card of someone else's (a hub download): none of it is read, not even its
    # tokenizer's model_max_length, which is no run's
    (folder / "README.md").write_text("---\nlicense: mit\ntags:\n- summarization\n- "
                                      "data.source_column\n---\n# `data.source_column text`\n")
    assert exported_task(folder) is None and exported_inputs(folder) == {}


def test_the_cards_source_length_wins_over_an_older_exports_tokenizer(tmp_path):
    # Exports of 2026-12-03 to 12-04 kept the base model's model_max_length (1024) in the
    # tokenizer beside a card saying the run's 480: a copied final/ of a SQAC run was fed
    # 1024 tokens, with a note saying the folder said so (upgrade audit).
    from seq2seq_es.engine.hub import write_export_card
    from seq2seq_es.engine.inference import exported_inputs

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 1024}')
    write_export_card(folder, compose("sqac", "barto-tiny",
                                      overrides={"data.max_source_length": "480"}),
                      tmp_path / "run" / "checkpoints" / "step_00000004")
    assert "at most 480 tokens" in (folder / "README.md").read_text()
    assert exported_inputs(folder)["data.max_source_length"] == "480"
    # a card without the line (pushed before 2026-12-03): its tokenizer's is the base model's
    # too, so nothing is read; the task's default applies, said in a note
    card = folder / "README.md"
    card.write_text(card.read_text().replace("at most 480 tokens", "up to the run's length"))
    assert "data.max_source_length" not in exported_inputs(folder)


# ---- SLURM: submit and sweep compose an own task's runs like a registry task's ---------------

def _own_overrides(files):
    return ["--data.source_column", "articulo", "--data.target_column", "titular",
            "--data.train_file", files["train"], "--data.validation_file", files["validation"]]


def test_slurm_submit_and_sweep_take_an_own_task_defined_after_the_dashes(tmp_path, capsys):
    from seq2seq_es.slurm.cli import main as slurm_main

    # enough training rows for the paper's largest step: the files are read before sbatch
    files = {split: _jsonl(tmp_path / f"{split}.jsonl", ROWS * (32 if split == "train" else 1))
             for split in ("train", "validation")}
    assert slurm_main(["submit", "--task", "titulares", "--model", "barto-tiny", "--run-dir",
                       str(tmp_path / "run"), "--dry-run", "--", *_own_overrides(files)]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH" in script and "titulares" in script and "--data.source_column" in script
    assert slurm_main(["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair",
                       "barto-tiny:titulares", "--dry-run", "--", *_own_overrides(files)]) == 0
    out = capsys.readouterr().out
    # the paper's grid (batch x lr x epochs: 12 points) for a task of the user's own
    assert "barto-tiny__titulares__" in out and "12 runs" in out
    # without the columns, the name is refused with the way to define one's own
    assert slurm_main(["submit", "--task", "titulares", "--model", "barto-tiny", "--run-dir",
                       str(tmp_path / "run2"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'titulares'" in err and "give its data.source_column and " \
        "data.target_column (and data.train_file, data.validation_file) after --" in err
    assert slurm_main(["sweep", "--sweep-dir", str(tmp_path / "sweep2"), "--pair",
                       "barto-tiny:titulares", "--dry-run"]) == 2
    assert "unknown task 'titulares'" in capsys.readouterr().err
    assert slurm_main(["sweep", "--sweep-dir", str(tmp_path / "sweep3"), "--models",
                       "barto-tiny", "--tasks", "titulares", "--dry-run"]) == 2
    assert ("a task of your own runs as --pair MODEL:TASK with its data.source_column and "
            "data.target_column after --") in capsys.readouterr().err


# ---- what the walkthrough found: runs, rows and names an own task must not mix up ------------

def test_predict_reads_the_runs_own_columns_before_a_source_field(tmp_path):
    from seq2seq_es.engine.inference import read_sources

    task = task_for(compose("titulares", "barto-tiny", overrides=OWN).data)
    rows = [{**row, "source": "El País"} for row in ROWS]  # a news outlet, not the input
    path = tmp_path / "in.jsonl"
    _jsonl(path, rows)
    assert read_sources(path, None, task) == [row["articulo"] for row in ROWS]
    _jsonl(path, [{"source": "Hola."}])  # no run column: the source field, as documented
    assert read_sources(path, None, task) == ["Hola."]


def test_score_and_predict_say_how_to_reach_an_own_task(tmp_path, capsys):
    from seq2seq_es.cli import main

    predictions = tmp_path / "p.txt"
    predictions.write_text("Llueve.\n", encoding="utf-8")
    assert main(["score", "--task", "titulares", "--predictions", str(predictions),
                 "--references", str(predictions)]) == 2
    assert "for a task of your own, give --metric NAME" in capsys.readouterr().err
    assert main(["score", "--metric", "rouge,bleu", "--predictions", str(predictions),
                 "--references", str(predictions)]) == 0  # as data.metrics lists them
    assert {"rougeL", "bleu"} <= set(json.loads(capsys.readouterr().out))


@pytest.mark.slow
def test_a_resume_may_not_redefine_the_task_or_how_the_best_is_chosen(tmp_path):
    files = _own_files(tmp_path, demo_files(tmp_path / "data", train_size=8))
    out = tmp_path / "run"
    run("none", 1, _own_args(files, out, extra=["--train.eval_generate", "false"]))
    resume = ["--train.resume", "auto", "--train.max_steps", "3"]
    # other metrics (the checkpoint's task was validated by bleu, chrf)
    args = _own_args(files, out, extra=["--train.eval_generate", "false", *resume])
    args[args.index("--data.metrics") + 1] = "chrf,bleu"
    result = run("none", 1, args, check=False)
    assert result.returncode == 2
    assert ("is of another run (data.metrics bleu,chrf; this run: data.metrics chrf,bleu)"
            in result.stderr)
    # the same task, but the best chosen by bleu where the checkpoints chose by the loss
    result = run("none", 1, _own_args(files, out, extra=resume), check=False)
    assert result.returncode == 2
    assert ("config key 'train.best_metric': the run's checkpoints chose their best by loss "
            "(step 2), this run would choose by bleu") in result.stderr


def test_collect_compares_own_task_runs_by_their_first_metric(tmp_path):
    from seq2seq_es.slurm.results_table import own_task_main_metric, task_family

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose("titulares", "barto-tiny", overrides={**OWN, "data.metrics": "bleu,rouge",
                                                        "train.eval_generate": "false"})
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    # not the runs' train.best_metric (the loss here): what the task is validated by
    assert own_task_main_metric(run_dir) == "bleu"
    assert task_family("titulares", run_dir) == ("other", "bleu")
    assert task_family("mlsum", run_dir) == ("summarization", "rougeL")


def test_a_key_the_command_does_not_read_is_said(capsys):
    from seq2seq_es.config import note_not_read

    cfg = compose("titulares", "barto-tiny", overrides={**OWN, "gen.temperature": "0.8"})
    note_not_read(cfg, {"gen.temperature"})
    assert capsys.readouterr().err == ("note: not read by this run: gen.temperature "
                                       "(gen.do_sample=False)\n")
