"""Bad command-line input refused with one `error:` line naming the option or config key, before
the work it would have spoilt: output paths of evaluate, predict, export and the demo before any
model loads; length limits the special tokens fill on their own before anything is tokenized
(they crashed in truncate_ids); and predict's input file may end in blank lines."""

from __future__ import annotations

import json

import datasets
import pytest

from engine_runs import base_args, demo_files, run
from seq2seq_es.cli import main as cli
from seq2seq_es.data.tokenize import tokenize_examples
from seq2seq_es.engine import inference
from seq2seq_es.engine.inference import InputError, read_sources
from seq2seq_es.errors import ConfigError
from seq2seq_es.models import get_model_spec, load_tokenizer
from seq2seq_es.models.tiny import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def model_folder():
    """barto-tiny's checkpoint folder: a model folder outside any run (--model barto-tiny)."""
    return ensure_tiny_checkpoint("barto-tiny")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the command gets as far as loading the model."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad path was refused")
    monkeypatch.setattr(inference, "load_for_inference", load)


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"source": "Hola mundo."}\n{"source": "Adiós."}\n', encoding="utf-8")
    return path


def one_error(capsys) -> str:
    """The one `error:` line on stderr, its last (progress lines may come before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("error:")] == err[-1:], err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


# ---------------------------------------------------------------------------------------------
# Output paths, before the model loads (they failed after every prediction was made)


def test_evaluate_refuses_an_output_dir_that_is_a_file(model_folder, tmp_path, no_loading,
                                                       capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    base = ["evaluate", str(model_folder), "--task", "mlsum", "--model", "barto-tiny",
            "--split", "test"]
    assert cli([*base, "--output-dir", str(a_file)]) == 2
    assert one_error(capsys) == (f"error: argument --output-dir: {a_file} is a file; expected "
                                 "a folder (remove the file or give another path)")
    assert cli([*base, "--output-dir", str(a_file / "scores")]) == 2
    assert one_error(capsys).startswith(f"error: argument --output-dir: {a_file} is a file, so ")


def test_predict_refuses_an_output_that_is_a_folder_or_under_a_file(model_folder, rows, tmp_path,
                                                                    no_loading, capsys):
    base = ["predict", str(model_folder), "--model", "barto-tiny", "--input", str(rows)]
    folder = tmp_path / "outputs"
    folder.mkdir()
    assert cli([*base, "--output", str(folder)]) == 2
    assert one_error(capsys) == (f"error: argument --output: {folder} is a folder; expected a "
                                 f"file name (e.g. {folder / 'predictions.jsonl'})")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert cli([*base, "--output", str(a_file / "x.jsonl")]) == 2
    assert one_error(capsys) == (f"error: argument --output: {a_file} is a file, so "
                                 f"{a_file / 'x.jsonl'} cannot be written under it; give another "
                                 "path")
    assert a_file.read_text() == "x" and not any(folder.iterdir())
    # "." and "" have no name (a ValueError's traceback they gave)
    for nameless in (".", ""):
        assert cli([*base, "--output", nameless]) == 2
        assert one_error(capsys) == "error: argument --output: . is a folder; expected a file name"
    assert cli(["predict", str(model_folder), "--model", "barto-tiny", "--input", ".",
                "--output", str(tmp_path / "out.jsonl")]) == 2
    assert one_error(capsys) == "error: argument --input: . is a folder; expected a file name"


def test_predict_refuses_an_existing_output_unless_overwrite(model_folder, rows, tmp_path,
                                                            capsys):
    # A user's data file named as --output was replaced by the predictions without a word.
    data = tmp_path / "mydata.jsonl"
    data.write_text('{"text": "a"}\n' * 8)
    base = ["predict", str(model_folder), "--model", "barto-tiny", "--input", str(rows),
            "--output", str(data), "--gen.max_new_tokens", "2"]
    assert cli(base) == 2
    assert one_error(capsys) == (f"error: argument --output: {data} exists; give another file, "
                                 "or add --overwrite to replace it")
    assert data.read_text() == '{"text": "a"}\n' * 8
    assert cli([*base, "--overwrite"]) == 0
    assert len(data.read_text().splitlines()) == len(rows.read_text().splitlines())


def test_export_refuses_an_out_under_a_file(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    # refused before the checkpoint is even looked at (it does not exist here)
    assert cli(["export", str(tmp_path / "no_checkpoint"), str(a_file / "model")]) == 2
    assert one_error(capsys).startswith(f"error: argument OUT: {a_file} is a file, so ")


def test_demo_refuses_an_output_dir_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert cli(["demo", "--output-dir", str(a_file)]) == 2
    assert one_error(capsys) == (f"error: argument --output-dir: {a_file} is a file; expected "
                                 "a folder (remove the file or give another path)")
    assert a_file.read_text() == "x"
    # the demo writes its data into DIR/data first: a file there is refused as well
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data").write_text("x")
    assert cli(["demo", "--output-dir", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'run' / 'data'} is a file" in one_error(capsys)


def test_demo_names_its_own_task_for_another_one(tmp_path, capsys):
    # `demo --task sqac` was refused as "--task given 2 times": the demo passes its own
    assert cli(["demo", "--output-dir", str(tmp_path / "run"), "--task", "sqac"]) == 2
    assert one_error(capsys).startswith("error: argument --task: the demo trains mlsum on its "
                                        "generated news summaries, not sqac; train sqac on")
    assert not (tmp_path / "run").exists()  # nothing written


# ---------------------------------------------------------------------------------------------
# Length limits the special tokens fill (truncate_ids' ValueError, a traceback)


def _examples() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"source": ["Una noticia larga sobre Granada."],
                                       "target": ["Un resumen corto."]})


def _tokenize(name: str, tmp_path, source: int, target: int):
    tokenizer = load_tokenizer(str(ensure_tiny_checkpoint(name)))
    start = get_model_spec(name).adapter.special_tokens(tokenizer).decoder_start
    return tokenize_examples(_examples(), tokenizer, split="train", max_source_length=source,
                             max_target_length=target, drop_leading_label_id=start,
                             cache_dir=str(tmp_path))


@pytest.mark.parametrize("name, source, target, key, least, specials", [
    ("barto-tiny", 64, 2, "data.max_target_length", 3, "<s> and </s>"),
    ("barto-tiny", 64, 1, "data.max_target_length", 3, "<s> and </s>"),
    ("barto-tiny", 2, 64, "data.max_source_length", 3, "<s> and </s>"),
    ("t5s-tiny", 1, 64, "data.max_source_length", 2, "</s>"),
    # BERT2BERT labels drop the leading [CLS] (the decoder start): one special is left
    ("beto2beto-tiny", 64, 1, "data.max_target_length", 2, "[SEP]"),
])
def test_a_length_the_special_tokens_fill_names_its_key(name, source, target, key, least,
                                                         specials, tmp_path):
    with pytest.raises(ConfigError) as error:
        _tokenize(name, tmp_path, source, target)
    assert error.value.key == key
    count = least - 1
    assert error.value.reason.startswith(
        f"{min(source, target)} leaves no room for a token besides the model's {count} special "
        f"token{'s' if count > 1 else ''} ({specials}) around every ")
    assert error.value.reason.endswith(f"; give at least {least}")


@pytest.mark.parametrize("name, source, target", [
    ("barto-tiny", 3, 3), ("t5s-tiny", 2, 2), ("beto2beto-tiny", 3, 2)])
def test_the_shortest_lengths_with_room_for_a_token_still_work(name, source, target, tmp_path):
    tokenized, report = _tokenize(name, tmp_path, source, target)
    assert len(tokenized[0]["input_ids"]) == source and len(tokenized[0]["labels"]) == target


def test_predict_names_max_source_length_it_leaves_no_room(model_folder, rows, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert cli(["predict", str(model_folder), "--model", "barto-tiny", "--input", str(rows),
                "--output", str(out), "--max-source-length", "2"]) == 2
    assert one_error(capsys).startswith("error: argument --max-source-length: 2 leaves no room "
                                        "for a token besides the model's 2 special tokens")
    assert cli(["predict", str(model_folder), "--model", "barto-tiny", "--input", str(rows),
                "--output", str(out), "--data.max_source_length", "1"]) == 2
    assert one_error(capsys).startswith("error: config key 'data.max_source_length': 1 leaves "
                                        "no room")
    assert not out.exists()


def test_evaluate_names_max_target_length_it_leaves_no_room(model_folder, tmp_path, capsys):
    files = demo_files(tmp_path / "data", train_size=0)
    out = tmp_path / "scores"
    assert cli(["evaluate", str(model_folder), "--task", "mlsum", "--model", "barto-tiny",
                "--split", "validation", "--data.validation_file", files["validation"],
                "--output-dir", str(out), "--data.max_target_length", "2"]) == 2
    assert one_error(capsys).startswith("error: config key 'data.max_target_length': 2 leaves "
                                        "no room for a token")
    assert not out.exists()


def test_train_names_max_target_length_it_leaves_no_room(tmp_path):
    files = demo_files(tmp_path / "data", train_size=8)
    proc = run("none", 1, base_args(files, tmp_path / "run", extra=[
        "--data.max_target_length", "2"]), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ValueError" not in proc.stderr
    assert ("error: config key 'data.max_target_length': 2 leaves no room for a token besides "
            "the model's 2 special tokens (<s> and </s>) around every target; give at least 3"
            in proc.stderr.splitlines())


@pytest.mark.slow
def test_train_refuses_a_bad_test_file_before_tokenizing_any_split(tmp_path):
    # The validation and test files were read only after the training split was tokenized:
    # with a large corpus the error came minutes late.
    files = demo_files(tmp_path / "data", train_size=8)
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"texto": "a", "resumen": "b"}\n', encoding="utf-8")
    proc = run("none", 1, base_args(files, tmp_path / "run", extra=[
        "--data.test_file", str(bad)]), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: file {bad}, column 'text': missing columns 'text', 'summary'" in proc.stderr
    assert "[train] 8 examples; sources truncated" not in proc.stdout  # nothing tokenized


# ---------------------------------------------------------------------------------------------
# predict's input: blank lines at the end are no rows


@pytest.mark.parametrize("name, text", [
    ("trail.jsonl", '{"source": "Uno."}\n{"source": "Dos."}\n\n\n'),
    ("trail_spaces.jsonl", '{"source": "Uno."}\n{"source": "Dos."}\n  \r\n\t\n'),
    ("no_newline.jsonl", '{"source": "Uno."}\n{"source": "Dos."}\n\n'),
    ("trail.txt", "Uno.\nDos.\n\n"),
])
def test_blank_lines_at_the_end_of_the_input_are_no_rows(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert read_sources(path, None) == ["Uno.", "Dos."]


@pytest.mark.parametrize("name, text, line", [
    ("middle.jsonl", '{"source": "Uno."}\n\n{"source": "Dos."}\n\n', 2),
    ("middle.txt", "Uno.\n\nDos.\n\n", 2),
])
def test_a_blank_line_between_rows_is_still_refused(tmp_path, name, text, line):
    # skipping it would put every later row's prediction on another output line
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as error:
        read_sources(path, None)
    assert str(error.value).startswith(f"input file {path}, line {line}: empty line")


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"),
                                            ("utf-32", "UTF-32")])
def test_a_utf16_input_is_named_as_such(tmp_path, encoding, name):
    # Windows Notepad's "Unicode": it was "line 1: not UTF-8 text", where data files say which
    path = tmp_path / "notepad.txt"
    path.write_text("Una noticia.\nOtra noticia.\n", encoding=encoding)
    with pytest.raises(InputError) as error:
        read_sources(path, None)
    assert str(error.value) == f"input file {path}: the file is {name}, not UTF-8: save it as UTF-8"


def test_an_input_of_blank_lines_only_is_empty(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        read_sources(path, None)
    assert str(error.value) == f"input file {path}: is empty"


def test_predict_writes_one_line_per_row_of_an_input_ending_in_blank_lines(model_folder,
                                                                           tmp_path):
    path = tmp_path / "trail.jsonl"
    path.write_text('{"source": "Hola mundo."}\n{"source": "Adiós."}\n\n\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli(["predict", str(model_folder), "--model", "barto-tiny", "--input", str(path),
                "--output", str(out), "--gen.max_new_tokens", "3", "--gen.num_beams", "1"]) == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["source"] for row in got] == ["Hola mundo.", "Adiós."]


def test_a_run_without_final_points_predict_and_evaluate_to_its_checkpoints(tmp_path, capsys):
    # The hint said "evaluate one of its checkpoints instead" to predict users too.
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000004"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    (run / "config.yaml").write_text("model:\n  name: barto-tiny\ndata:\n  task: mlsum\n")
    for command in (["predict", str(run), "--input", "in.txt", "--output",
                     str(tmp_path / "out.txt")], ["evaluate", str(run)]):
        assert cli(command) == 2
        assert one_error(capsys) == (
            f"error: run folder {run} has no final/ model (the run has not finished, or ran with "
            f"train.export false); give one of its checkpoints instead: {step}")


def test_a_relative_model_folder_is_named_as_given_not_as_a_config_key(model_folder, tmp_path,
                                                                       monkeypatch, capsys):
    # A folder given to predict is no model.path of the user's: the refusal of a folder without
    # a tokenizer named the key for a relative path (compose had made model.path absolute).
    import shutil

    folder = tmp_path / "notok"
    shutil.copytree(model_folder, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    source = tmp_path / "in.txt"
    source.write_text("Una noticia.\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = cli(["predict", "notok", "--model", "barto-tiny", "--input", "in.txt",
                "--output", "out.txt"])
    err = capsys.readouterr().err
    assert code == 2 and "error: " in err and "config key" not in err, err
