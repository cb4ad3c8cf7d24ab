"""Config and command-line ergonomics found by a user's audit: each case was accepted, or said
in several lines, where a one-line refusal (or the value meant) belongs before any work."""

import os

import pytest

from seq2seq_es.cli import main
from seq2seq_es.config import compose, parse_overrides, read_yaml
from seq2seq_es.errors import ConfigError
from test_config_input import refused, run_file  # the same helpers: mlsum on barto-tiny

PAIR = ["--task", "mlsum", "--model", "barto-tiny"]


def composed(overrides=(), config_file=None):
    return compose(task="mlsum", model="barto-tiny", config_file=config_file,
                   overrides=parse_overrides(list(overrides)))


# `--train.output_dir=~/runs/x` (the shell expands no `~` after `=`) and a YAML `~/runs/x`
# trained into a folder literally named `~` in the current one; every other path key expands it.
def test_a_tilde_in_the_run_folder_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = composed(["--train.output_dir=~/runs/x"])
    assert cfg.train.output_dir == os.path.join(str(tmp_path), "runs", "x")
    cfg = composed(config_file=run_file(tmp_path, "train:\n  output_dir: ~/runs/y\n"))
    assert cfg.train.output_dir == os.path.join(str(tmp_path), "runs", "y")


def test_a_tilde_in_a_resume_checkpoint_path_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = composed(["--train.resume", "~/runs/x/checkpoints/step_00000010"])
    assert cfg.train.resume == os.path.join(str(tmp_path), "runs/x/checkpoints/step_00000010")


def test_a_relative_run_folder_stays_relative():
    assert composed(["--train.output_dir", "runs/x"]).train.output_dir == "runs/x"


# 0 or -1 passed `config` (and `slurm submit`) and was refused by the loader only after the
# model had loaded and the training split was read.
@pytest.mark.parametrize("key", ["data.max_train_samples", "data.max_eval_samples"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_sample_count_below_one_is_refused_by_compose(key, value):
    error = refused([f"--{key}", value])
    assert error.key == key and "at least 1" in str(error)


def test_no_sample_count_means_every_example():
    assert composed(["--data.max_eval_samples", "none"]).data.max_eval_samples is None


# PyYAML's message is four lines, naming the file twice; errors are one line with the line.
def test_a_yaml_syntax_error_is_one_line_with_its_line(tmp_path):
    path = run_file(tmp_path, "optim:\n  lr: 1e-4\n max_steps: [3\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    message = str(err.value)
    assert "\n" not in message
    assert "not valid YAML: line 3, column 2" in message


def test_a_yaml_syntax_error_on_the_command_line_is_one_error_line(tmp_path, capsys):
    path = run_file(tmp_path, "optim:\n\tlr: 1e-4\n")
    assert main(["config", *PAIR, "--config", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "line 2, column 1" in err


# A YAML list for a comma-separated key (the Trainer's `report_to: [wandb, tensorboard]`) was
# refused as "expected a string".
def test_a_yaml_list_for_a_comma_separated_key(tmp_path):
    cfg = composed(config_file=run_file(tmp_path, "train:\n  report_to: [none]\n"))
    assert cfg.train.report_to == "none"
    own = compose(task="titulares", model="barto-tiny", config_file=run_file(
        tmp_path, "data:\n  source_column: a\n  target_column: b\n  metrics: [rouge, bleu]\n"))
    assert own.data.metrics == "rouge,bleu"


def test_a_yaml_list_for_another_text_key_is_still_refused(tmp_path):
    error = refused(config_file=run_file(tmp_path, "train:\n  run_group: [a, b]\n"))
    assert error.key == "train.run_group"


# `config` is where a run is checked before it starts, and said none of `train`'s notes.
def test_config_says_the_notes_train_says_on_stderr(capsys):
    assert main(["config", *PAIR, "--train.max_steps", "5", "--train.epochs", "3",
                 "--model.attention_window", "512"]) == 0
    out, err = capsys.readouterr()
    assert "note: not read by this run: train.epochs" in err
    assert "model.attention_window" in err
    assert "note:" not in out  # the YAML stays what --config accepts


def test_config_says_a_pair_the_paper_did_not_run(capsys):
    assert main(["config", "--task", "mlsum", "--model", "ledo"]) == 0
    assert "the paper did not fine-tune ledo on mlsum" in capsys.readouterr().err


# The Trainer's --resume_from_checkpoint True was taken for a folder named 'true', refused only
# once the run had started.
@pytest.mark.parametrize("word, meant", [("true", "auto"), ("latest", "auto"),
                                         ("False", "none")])
def test_a_resume_word_of_other_tools_names_the_choice_meant(word, meant):
    error = refused(["--train.resume", word])
    assert error.key == "train.resume" and f"give {meant}" in str(error)


def test_a_checkpoint_folder_named_like_a_word_is_still_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latest").mkdir()
    assert composed(["--train.resume", "latest"]).train.resume == "latest"


# The shell expands no `~` after `=`: `predict --output=~/p.txt` wrote into a folder named `~`
# here (its checks expanded it, the writer did not); so did evaluate's and the demo's folders.
def test_a_tilde_after_an_equals_sign_in_path_options_is_the_home_folder(tmp_path, monkeypatch):
    from seq2seq_es.engine.entry import parse_train_args
    from seq2seq_es.engine.inference import parse_evaluate_args, parse_predict_args

    monkeypatch.setenv("HOME", str(tmp_path))
    home = str(tmp_path)
    known, _ = parse_predict_args(["run", "--input=~/in.txt", "--output=~/p.txt",
                                   "--config=~/c.yaml"])
    assert (known.input, known.output, known.config) == (
        f"{home}/in.txt", f"{home}/p.txt", f"{home}/c.yaml")
    known, _ = parse_evaluate_args(["run", "--output-dir=~/ev", "--config=~/c.yaml"])
    assert (known.output_dir, known.config) == (f"{home}/ev", f"{home}/c.yaml")
    known, _ = parse_train_args(["--config=~/c.yaml"])
    assert known.config == f"{home}/c.yaml"


def test_the_demo_folder_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    from seq2seq_es.demo.run import demo_main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    # An unknown key stops it right after the data is written, before any model loads.
    with pytest.raises(ConfigError):
        demo_main(["--output-dir=~/demo", "--train.nokey", "1"])
    assert (tmp_path / "home" / "demo" / "data").is_dir()
    assert not (tmp_path / "~").exists()


def test_log_every_zero_is_refused_not_taken_for_one():
    # 0 logged every step without a word, where eval_every 0 and save_every 0 mean none
    from seq2seq_es.config import compose
    from seq2seq_es.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        compose(task="mlsum", model="barto-tiny", overrides={"train.log_every": "0"})
    assert info.value.key == "train.log_every" and "at least 1" in str(info.value)
    assert compose(task="mlsum", model="barto-tiny",
                   overrides={"train.log_every": "1"}).train.log_every == 1


def test_config_refuses_a_best_metric_the_task_does_not_report(capsys):
    # train refuses it before loading; `config`, where a run is checked first, printed it
    assert main(["config", *PAIR, "--train.best_metric", "bleu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'train.best_metric': 'bleu' is not among")
    assert main(["config", *PAIR, "--train.best_metric", "rougeL"]) == 0


def test_run_file_booleans_of_one_and_zero_and_a_capitalised_resume_choice(tmp_path):
    # YAML reads `1` as a number: refused there, where `--train.eval_generate 1` was accepted;
    # `--train.resume Auto` was read as a checkpoint folder named Auto.
    from seq2seq_es.config import compose

    path = run_file(tmp_path, "train:\n  eval_generate: 0\n  load_best_at_end: 1\n")
    cfg = compose(task="mlsum", model="barto-tiny", config_file=path,
                  overrides={"train.resume": "Auto"})
    assert cfg.train.eval_generate is False and cfg.train.load_best_at_end is True
    assert cfg.train.resume == "auto"


def test_score_reads_files_named_from_the_home_folder(tmp_path, monkeypatch, capsys):
    # `--predictions=~/p.txt`: the shell leaves a ~ after = alone, and score said it does not exist
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "p.txt").write_text("el gato\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("el gato\n", encoding="utf-8")
    assert main(["score", "--metric", "exact_match", "--predictions=~/p.txt",
                 "--references=~/r.txt"]) == 0
    assert "exact_match" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["barto-tiny", "t5s-tiny", "ledo-tiny", "beto2beto-tiny"])
def test_the_demos_own_settings_are_all_read_by_the_run(model):
    # The demo's first line was "note: not read by this run: gen.length_penalty
    # (gen.num_beams=1)", about a key its user never set (README walkthrough).
    from seq2seq_es.config import compose, not_applying
    from seq2seq_es.demo.run import DEMO_SETTINGS, DEMO_TASK

    cfg = compose(DEMO_TASK, model, overrides=dict(DEMO_SETTINGS))
    assert set(DEMO_SETTINGS) & set(not_applying(cfg)) == set()


def test_a_model_path_exported_from_another_model_is_said(tmp_path, capsys):
    # barto-tiny's export trained under --model barto: the run, its card and collect's table
    # called it BARTO in silence (README walkthrough).
    from seq2seq_es.config import compose
    from seq2seq_es.engine.entry import note_model_path_of_another_model

    folder = tmp_path / "exp600"
    folder.mkdir()
    (folder / "README.md").write_text(
        "---\nlanguage: es\nlibrary_name: transformers\ntags:\n- seq2seq-es\n- mlsum\n---\n\n"
        "# barto-tiny fine-tuned on mlsum\n\nTrained with seq2seq-es.\n", encoding="utf-8")
    cfg = compose("mlsum", "barto", overrides={"model.path": str(folder)})
    note_model_path_of_another_model(cfg)
    assert capsys.readouterr().err == (
        f"note: model.path {folder} holds the weights of a barto-tiny run (its README.md says), "
        "trained here as model.name barto, the name this run's card and collect's table give "
        "it; --model.name barto-tiny names it as it is\n")
    for same in (compose("mlsum", "barto-tiny", overrides={"model.path": str(folder)}),
                 compose("mlsum", "barto")):  # the card's own model; no model.path
        note_model_path_of_another_model(same)
        assert capsys.readouterr().err == ""
