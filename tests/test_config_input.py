"""Bad input found by fuzzing the command line and run files: each refused in one line naming
its key or flag (or noted where a run does not read it), before any model, data or hub is
touched, instead of a traceback after training or a silently wrong run."""

import json

import pytest

from seq2seq_es.cli import build_config, main
from seq2seq_es.config import compose, parse_overrides
from seq2seq_es.errors import ConfigError
from seq2seq_es.slurm.sweep import train_argv

PAIR = ["--task", "mlsum", "--model", "barto-tiny"]


def refused(overrides=(), config_file=None, task="mlsum", model="barto-tiny"):
    with pytest.raises(ConfigError) as err:
        compose(task=task, model=model, config_file=config_file,
                overrides=parse_overrides(list(overrides)))
    assert "\n" not in str(err.value)
    return err.value


def run_file(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_line(capsys, argv):
    """The exit status and stderr of `seq2seq-es ARGV`."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# 1. An empty output_dir trained into the current folder; an empty file or path read the hub.

@pytest.mark.parametrize("key", ["train.output_dir", "data.train_file", "model.path",
                                 "data.cache_dir", "train.push_to_hub"])
def test_an_empty_path_or_name_is_refused_not_read_as_unset(key):
    error = refused([f"--{key}", ""])
    assert error.key == key and "is empty" in error.reason


def test_an_empty_output_dir_in_a_run_file_is_refused_naming_the_file(tmp_path):
    path = run_file(tmp_path, "train:\n  output_dir: ''\n")
    error = refused(config_file=path)
    assert error.key == "train.output_dir" and path in error.reason


# 2. A YAML boolean where text goes became the text 'True' or 'False'.

@pytest.mark.parametrize("section, key, value", [
    ("train", "push_to_hub", "true"), ("model", "path", "false"),
    ("train", "best_metric", "true"), ("data", "hub_revision", "true")])
def test_a_yaml_boolean_for_a_text_key_is_refused(tmp_path, section, key, value):
    error = refused(config_file=run_file(tmp_path, f"{section}:\n  {key}: {value}\n"))
    assert error.key == f"{section}.{key}"
    assert error.reason.startswith(f"expected text, got {value}")


def test_a_yaml_boolean_resume_lists_what_resume_takes(tmp_path):
    error = refused(config_file=run_file(tmp_path, "train:\n  resume: false\n"))
    assert error.key == "train.resume"
    assert "expected none, auto, must or a checkpoint folder, got false" in error.reason


def test_push_to_hub_true_on_the_command_line_is_the_trainers_switch_not_a_repo():
    error = refused(["--train.push_to_hub", "true"])
    assert error.key == "train.push_to_hub" and "NAMESPACE/NAME" in error.reason
    # Text stays text on the command line: a repo id, a metric, a checkpoint choice.
    cfg = compose("mlsum", "barto-tiny", overrides={"train.push_to_hub": "me/model",
                                                    "train.best_metric": "rougeL",
                                                    "train.resume": "auto"})
    assert (cfg.train.push_to_hub, cfg.train.best_metric, cfg.train.resume) == \
        ("me/model", "rougeL", "auto")


# 3. A dotted key given twice keeps its last value, as argparse keeps a repeated flag's (a
# script's base command line with overrides appended; the slurm planner's arguments).

def test_a_dotted_key_given_twice_keeps_its_last_value(capsys):
    assert main(["config", *PAIR, "--train.max_steps", "3", "--train.max_steps=5"]) == 0
    assert "max_steps: 5" in capsys.readouterr().out


def test_the_slurm_planners_arguments_keep_the_last_value(capsys, tmp_path):
    # A sweep's job calls `main` with the run's arguments, then the user's after --: there the
    # user's own run group follows the sweep's, and wins.
    argv = train_argv("barto-tiny", "mlsum", tmp_path / "run", {"train.max_steps": "3"},
                      ["--train.run_group", "mine", "--train.max_steps", "5"], run_group="sweep")
    assert main(["config", *argv]) == 0
    out = capsys.readouterr().out
    assert "run_group: mine" in out and "max_steps: 5" in out


# 4. Keys a run does not read, and an LED prefix that makes every token global.

@pytest.mark.parametrize("argv, note", [
    (["--train.export", "false", "--train.export_dtype", "fp16"],
     "train.export_dtype (train.export=False)"),
    (["--data.train_file", "t.jsonl", "--data.validation_file", "v.jsonl",
      "--data.hub_revision", "refs/convert/parquet"],
     "data.hub_revision (every split is a local file"),
    # beam search's own settings, dropped from a greedy generation config in silence
    (["--gen.num_beams", "1", "--gen.length_penalty", "2.0", "--gen.early_stopping", "false"],
     "gen.length_penalty (gen.num_beams=1); gen.early_stopping (gen.num_beams=1)"),
])
def test_train_notes_keys_it_does_not_read(capsys, monkeypatch, argv, note):
    monkeypatch.delenv("RANK", raising=False)
    build_config([*PAIR, *argv])
    assert f"note: not read by this run: {note}" in capsys.readouterr().err


def test_an_own_tasks_hub_dataset_is_noted_where_every_split_is_a_local_file(capsys,
                                                                            monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    build_config(["--task", "titulares", "--model", "barto-tiny", "--data.source_column",
                  "articulo", "--data.target_column", "titular", "--data.train_file", "t.jsonl",
                  "--data.validation_file", "v.jsonl", "--data.hub_dataset", "owner/ds",
                  "--data.hub_config", "es"])
    err = capsys.readouterr().err
    assert "data.hub_dataset (every split is a local file" in err
    assert "data.hub_config (every split is a local file" in err


def test_hub_revision_is_read_while_a_split_comes_from_the_hub(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    build_config([*PAIR, "--data.train_file", "t.jsonl", "--data.hub_revision", "main"])
    assert "hub_revision" not in capsys.readouterr().err


def test_an_led_global_prefix_covering_every_source_token_is_refused():
    error = refused(["--data.global_attention", "prefix:600", "--data.max_source_length", "512"],
                    task="xlsum", model="ledo-tiny")
    assert error.key == "data.global_attention" and "every token would be global" in error.reason
    compose("xlsum", "ledo-tiny", overrides={"data.global_attention": "prefix:64",
                                             "data.max_source_length": "512"})
    # BART reads no global attention: noted by train, not refused.
    compose("mlsum", "barto-tiny", overrides={"data.global_attention": "prefix:6000"})


# 5. A generation length past the decoder's positions failed after training.

@pytest.mark.parametrize("key", ["gen.max_new_tokens", "gen.min_new_tokens"])
def test_generation_lengths_past_the_target_positions_are_refused(key):
    overrides = ["--gen.max_new_tokens", "5000"]
    if key == "gen.min_new_tokens":  # and the minimum needs a maximum as long
        overrides += ["--gen.min_new_tokens", "5000"]
    error = refused(overrides)
    assert error.key == "gen.max_new_tokens"
    assert "5000 exceeds the 1024 target positions of model 'barto-tiny'" in error.reason
    assert compose("mlsum", "barto-tiny",
                   overrides={"gen.max_new_tokens": "1024"}).gen.max_new_tokens == 1024


# 6. Integers that overflow C ints, and a timeout past timedelta's range.

@pytest.mark.parametrize("key, value", [
    ("gen.num_beams", "1e30"), ("train.batch_size", "12345678901234567890"),
    ("train.epochs", str(2**31)), ("train.max_tokens", "1e20"), ("train.keep_last", "1e12"),
    ("gen.top_k", str(2**40)), ("model.lean_ce_chunk", str(2**31)),
    ("data.max_train_samples", "1e15"), ("dist.timeout_min", "1e30"),
])
def test_integers_past_two_to_the_31_are_refused(key, value):
    error = refused([f"--{key}", value])
    assert error.key == key and "must be less than 2**31 (2147483648) in size" in error.reason


def test_a_timeout_past_ten_years_is_refused_and_large_seeds_still_fit():
    error = refused(["--dist.timeout_min", str(10**8)])
    assert error.key == "dist.timeout_min" and "10 years" in error.reason
    cfg = compose("mlsum", "barto-tiny", overrides={"dist.timeout_min": str(60 * 24 * 365),
                                                    "train.seed": str(2**32 - 1),
                                                    "train.batch_size": str(2**31 - 1)})
    assert cfg.train.seed == 2**32 - 1


def test_a_run_files_huge_integer_is_refused(tmp_path):
    error = refused(config_file=run_file(tmp_path, f"train:\n  epochs: {10**20}\n"))
    assert error.key == "train.epochs" and "2**31" in error.reason


# 7. score: an empty metric, options no metric reads, data files read as plain lines.

@pytest.fixture
def texts(tmp_path):
    for name in ("p.txt", "r.txt"):
        (tmp_path / name).write_text("el gato duerme\nla casa\n", encoding="utf-8")
    (tmp_path / "r.csv").write_text("text,summary\nel gato,duerme\n", encoding="utf-8")
    return tmp_path


def score(capsys, texts, *args, references="r.txt"):
    code, err = error_line(capsys, ["score", "--predictions", str(texts / "p.txt"),
                                    "--references", str(texts / references), *args])
    return code, err


def test_sari_takes_its_sources_from_the_tasks_data_file_or_asks_for_them_by_flag(
        capsys, tmp_path):
    # `score --task bisect` against the data file asked for "sources=, or --sources FILE"
    # (sources= is the Python call) although the file holds each row's source
    from pathlib import Path

    data = Path(__file__).parent / "fixtures" / "bisect" / "test.jsonl"
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    predictions, sources = tmp_path / "p.txt", tmp_path / "s.txt"
    predictions.write_text("".join(row["source"] + "\n" for row in rows), encoding="utf-8")
    sources.write_text("".join(row["source"] + "\n" for row in rows), encoding="utf-8")
    base = ["score", "--task", "bisect", "--predictions", str(predictions)]
    assert main([*base, "--references", str(data)]) == 0
    out = capsys.readouterr()
    assert f"sources: the bisect rows of {data} (--sources FILE gives others)" in out.err
    assert main([*base, "--references", str(data), "--sources", str(sources)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(out.out)
    references = tmp_path / "r.txt"
    references.write_text("".join(row["target"] + "\n" for row in rows), encoding="utf-8")
    code, err = error_line(capsys, [*base, "--references", str(references)])
    assert code == 2 and err == (
        "error: argument --sources: SARI compares each prediction with its source: give "
        "--sources FILE (one a line, or evaluate's predictions.jsonl), or --task T with the "
        "task's data file as --references\n")


@pytest.mark.parametrize("metric", ["", " , "])
def test_score_refuses_an_empty_metric_by_its_flag(capsys, texts, metric):
    code, err = score(capsys, texts, "--metric", metric)
    assert code == 2 and err.startswith("error: argument --metric:") and "names no metric" in err


def test_score_refuses_an_empty_name_between_metrics(capsys, texts):
    code, err = score(capsys, texts, "--metric", "rouge,,bleu")
    assert code == 2 and err == ("error: argument --metric: has an empty name between commas "
                                 "('rouge,,bleu'); did you mean 'rouge,bleu'?\n")


def test_score_notes_options_no_metric_reads(capsys, texts):
    code, err = score(capsys, texts, "--metric", "rouge", "--em-convention", "squad")
    assert code == 0
    assert "note: not read by the metrics scored (rouge): --em-convention" in err
    code, err = score(capsys, texts, "--metric", "exact_match", "--em-convention", "squad")
    assert code == 0 and "note:" not in err
    # spanish mode always splits ROUGE-Lsum's sentences: the flag changes nothing there
    code, err = score(capsys, texts, "--metric", "rouge", "--split-sentences")
    assert code == 0 and "note: --split-sentences changes paper-mode ROUGE-Lsum only" in err
    code, err = score(capsys, texts, "--metric", "rouge", "--split-sentences", "--mode", "paper")
    assert code == 0 and "note:" not in err
    # a file said to be unread is not read: its one line refused the two predictions
    (texts / "one.txt").write_text("una fuente\n", encoding="utf-8")
    code, err = score(capsys, texts, "--metric", "bleu", "--sources", str(texts / "one.txt"))
    assert code == 0 and "note: not read by the metrics scored (bleu): --sources" in err
    code, err = score(capsys, texts, "--metric", "sari", "--sources", str(texts / "one.txt"))
    assert code == 2 and "has 1 sources" in err


def test_score_notes_an_empty_reference(capsys, texts):
    # chrF leaves such an example out (sacreBLEU's rule): a wrong prediction there cost nothing
    (texts / "blank.txt").write_text("el gato duerme\n\n", encoding="utf-8")
    assert main(["score", "--predictions", str(texts / "p.txt"), "--references",
                 str(texts / "blank.txt"), "--metric", "chrf"]) == 0
    said = capsys.readouterr()
    assert said.err == (
        f"note: 1 example(s) of {texts / 'blank.txt'} have an empty reference (the first is "
        "example 2): chrF leaves them out, the other metrics score their predictions against "
        "nothing\n")
    assert json.loads(said.out) == {"chrf": 100.0}
    code, err = score(capsys, texts, "--metric", "chrf")
    assert code == 0 and err == ""


def test_score_passes_over_blank_lines_of_a_jsonl_file(capsys, texts):
    # as training's reader does: a file ending in an empty line was "line 3: not valid JSON"
    lines = (texts / "p.txt").read_text(encoding="utf-8").splitlines()
    (texts / "r.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n  \n",
                                   encoding="utf-8")
    code, err = score(capsys, texts, "--metric", "exact_match", references="r.jsonl")
    assert code == 0, err


def test_score_reads_carriage_return_line_ends_as_predict_does(capsys, texts):
    # Read as one line, it was "has 1 predictions but ... has 2 references", saying nothing of
    # why, where predict (Python's text mode) reads the same file line by line.
    (texts / "mac.txt").write_bytes(b"el gato duerme\rla casa\r")
    code, err = error_line(capsys, ["score", "--metric", "exact_match", "--predictions",
                                    str(texts / "mac.txt"), "--references", str(texts / "r.txt")])
    assert code == 0, err
    from seq2seq_es.engine.inference import read_sources

    assert read_sources(texts / "mac.txt", None, None) == ["el gato duerme", "la casa"]


def test_score_refuses_a_csv_references_file_read_as_lines(capsys, texts):
    code, err = score(capsys, texts, "--metric", "rouge", references="r.csv")
    assert code == 2 and err.startswith("error: argument --references:")
    assert "with --task T, the task's data file" in err


# 8. A negative max_new_tokens was reported as the minimum that follows it.

def test_a_bad_max_new_tokens_is_named_not_the_minimum_that_follows_it():
    error = refused(["--gen.max_new_tokens", "-1"])
    assert error.key == "gen.max_new_tokens" and "must be at least 1, got -1" in error.reason


# 9. train and config without a task or model used the dataclass defaults.

@pytest.mark.parametrize("argv, flag", [([], "--task"), (["--task", "mlsum"], "--model"),
                                        (["--model", "barto-tiny"], "--task")])
def test_train_and_config_need_a_task_and_a_model(capsys, argv, flag):
    with pytest.raises(ConfigError, match=fr"argument {flag}: is required \(or --config FILE\)"):
        build_config(argv)
    code, err = error_line(capsys, ["config", *argv])
    assert code == 2 and f"error: argument {flag}: is required" in err


def test_a_run_file_or_dotted_keys_may_name_the_pair(tmp_path):
    named = run_file(tmp_path, "data:\n  task: sqac\nmodel:\n  name: t5s-tiny\n")
    assert build_config(["--config", named]).data.task == "sqac"
    assert build_config(["--data.task", "sqac", "--model.name", "t5s-tiny"]).model.name == \
        "t5s-tiny"
    unnamed = run_file(tmp_path, "optim:\n  lr: 0.001\n")
    with pytest.raises(ConfigError, match="argument --task: is required \\(or data.task in "):
        build_config(["--config", unnamed])


def test_a_run_folder_without_the_pair_is_pointed_to_its_own_config(tmp_path):
    # `--train.output_dir RUN --train.resume auto` said only "is required (or --config FILE)".
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  task: mlsum\nmodel:\n  name: barto-tiny\n")
    with pytest.raises(ConfigError) as error:
        build_config(["--train.output_dir", str(run), "--train.resume", "auto"])
    assert str(error.value) == (f"argument --task: is required (or --config FILE; "
                                f"{run / 'config.yaml'} holds that run's: --config "
                                f"{run / 'config.yaml'})")


def test_a_copied_runs_config_says_where_the_run_goes(tmp_path, capsys, monkeypatch):
    # A copy's config.yaml still names the original folder: the resume went on (and finished)
    # the original without a word, while the user meant the copy.
    monkeypatch.delenv("RANK", raising=False)
    original, copy = tmp_path / "original", tmp_path / "copy"
    copy.mkdir()
    (copy / "config.yaml").write_text("data:\n  task: mlsum\nmodel:\n  name: barto-tiny\n"
                                      f"train:\n  output_dir: {original}\n")
    (copy / "metrics.jsonl").write_text('{"step": 1}\n')
    cfg = build_config(["--config", str(copy / "config.yaml"), "--train.resume", "auto"])
    assert cfg.train.output_dir == str(original)
    assert (f"note: {copy / 'config.yaml'} is the config of the run folder {copy}, but its "
            f"train.output_dir is {original}: this run goes there (--train.output_dir {copy} "
            "trains in the folder of the file)") in capsys.readouterr().err
    build_config(["--config", str(copy / "config.yaml"), "--train.output_dir", str(copy)])
    assert "note:" not in capsys.readouterr().err


# 10. config's argparse errors named train.

def test_config_usage_errors_name_config(capsys):
    with pytest.raises(SystemExit):
        main(["config", *PAIR, "--config"])
    assert capsys.readouterr().err.startswith("usage: seq2seq-es config ")


# 11. Betas in brackets, and an empty task or model name.

def test_betas_may_be_written_in_brackets():
    assert compose("mlsum", "barto-tiny",
                   overrides={"optim.betas": "[0.8, 0.95]"}).optim.betas == (0.8, 0.95)
    error = refused(["--optim.betas", "[1,2]"])
    assert error.key == "optim.betas" and "each beta must be in [0, 1)" in error.reason


@pytest.mark.parametrize("argv, key", [
    (["--data.task", ""], "data.task"), (["--model.name", ""], "model.name"),
    (["--task", "", "--model", "barto-tiny"], "--task"),
])
def test_an_empty_task_or_model_name_is_refused_by_its_key(capsys, argv, key):
    argv = argv if "--task" in argv else [*PAIR, *argv]
    code, err = error_line(capsys, ["config", *argv])
    where = f"argument {key}" if key.startswith("--") else f"config key '{key}'"
    assert code == 2 and f"error: {where}: is empty; give a " in err


def test_a_batch_size_under_the_pairs_accumulation_is_noted(capsys, monkeypatch):
    # --train.batch_size 8 on WMT13 made steps of 32 (the task's grad_accum 4) where a Trainer
    # user expects the per-device batch to be the step; only the batches line showed it.
    monkeypatch.delenv("RANK", raising=False)
    pair = ["--task", "wmt13-es-en", "--model", "t5s-tiny"]
    cfg = build_config([*pair, "--train.batch_size", "8"])
    assert cfg.train.grad_accum == 4
    assert ("note: train.grad_accum 4 comes from the defaults of t5s-tiny on wmt13-es-en: a step "
            "takes train.batch_size 8 x 4 examples per rank; --train.grad_accum 1 makes a step "
            "of the batch alone") in capsys.readouterr().err
    for argv in ([*pair], [*pair, "--train.batch_size", "8", "--train.grad_accum", "2"],
                 [*PAIR, "--train.batch_size", "8"]):
        build_config(argv)
        assert "grad_accum" not in capsys.readouterr().err, argv


def test_a_pair_the_paper_did_not_fine_tune_is_noted(capsys, monkeypatch):
    # LEDO on MLSUM trained on mlsum's defaults without a word, where every other paper pair
    # has the paper's settings.
    monkeypatch.delenv("RANK", raising=False)
    build_config(["--task", "mlsum", "--model", "ledo-tiny"])
    assert ("note: the paper did not fine-tune ledo on mlsum (it ran ledo on xlsum, eurlexsum): "
            "this run's settings are this package's defaults for the pair, not the paper's "
            "(`seq2seq-es config` shows where each value comes from)") in capsys.readouterr().err
    build_config(["--task", "wmt13-en-es", "--model", "beto2beto-tiny"])
    assert "(it ran beto2beto on mlsum, wikilingua, xlsum, eurlexsum, sqac, mlqa, bisect, " \
        "miam)" in capsys.readouterr().err
    for argv in (["--task", "xlsum", "--model", "ledo-tiny"], PAIR,
                 ["--task", "wmt13-en-es", "--model", "mbert2mbert-tiny"]):
        build_config(argv)
        assert "did not fine-tune" not in capsys.readouterr().err, argv


def test_a_validation_or_test_file_that_is_the_training_file_is_warned_of(capsys, monkeypatch,
                                                                          tmp_path):
    # A run validated on its own training file chose its checkpoint (and collect its grid point)
    # on data it trained on; nothing said so.
    monkeypatch.delenv("RANK", raising=False)
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    for path in (train, dev):
        path.write_text('{"text": "a", "summary": "b"}\n', encoding="utf-8")
    (tmp_path / "again.jsonl").symlink_to(train)
    build_config([*PAIR, "--data.train_file", str(train), "--data.validation_file",
                  str(tmp_path / "again.jsonl"), "--data.test_file", str(train)])
    assert (f"warning: data.validation_file and data.test_file are the training file ({train}): "
            "their scores are on data the model trains on") in capsys.readouterr().err
    build_config([*PAIR, "--data.train_file", str(train), "--data.validation_file", str(dev)])
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("key,name", [("data.train_file", "train.jsonl"),
                                      ("dist.deepspeed_config", "ds.json"),
                                      ("model.path", "final")])
def test_a_relative_path_present_beside_the_config_file_only_is_refused_saying_so(
        tmp_path, monkeypatch, key, name):
    # `seq2seq-es train --config exp/run.yaml` with `train_file: train.jsonl` beside run.yaml:
    # paths are read from the working folder (documented), and the run failed later with
    # "does not exist" (a model.path was tried as a hub id) though the file sat beside the YAML.
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "final").mkdir()
    (exp / "final" / "config.json").write_text("{}")
    (exp / "train.jsonl").write_text('{"text": "a", "summary": "b"}\n')
    (exp / "ds.json").write_text("{}")
    section, field = key.split(".")
    (exp / "run.yaml").write_text(f"{section}:\n  {field}: {name}\n")
    monkeypatch.chdir(tmp_path)
    error = refused(config_file="exp/run.yaml")
    assert error.key == key
    assert f"{name} (in exp/run.yaml, line 2) does not exist here" in str(error)
    assert f"write {exp / name} in the file, or run from exp" in str(error)
    # From the file's folder it is found; a command-line value of the key is the user's own.
    monkeypatch.chdir(exp)
    compose(task="mlsum", model="barto-tiny", config_file="run.yaml")
    monkeypatch.chdir(tmp_path)
    compose(task="mlsum", model="barto-tiny", config_file="exp/run.yaml",
            overrides={key: str(exp / name)})


def test_a_hub_id_naming_a_folder_beside_the_config_file_is_not_refused(tmp_path, monkeypatch):
    # `hf download owner/name --local-dir owner/name` half done, or an empty folder: a model.path
    # that is a hub id is a hub id unless the folder beside the file holds a model.
    (tmp_path / "exp" / "vgaraujov" / "bart-base-spanish").mkdir(parents=True)
    (tmp_path / "exp" / "run.yaml").write_text("model:\n  path: vgaraujov/bart-base-spanish\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose(task="mlsum", model="barto-tiny", config_file="exp/run.yaml")
    assert cfg.model.path == "vgaraujov/bart-base-spanish"
