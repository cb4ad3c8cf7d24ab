"""`seq2seq-es train --help` (every key: type, default, meaning from config.py's comments) and
`seq2seq-es config` (the resolved YAML, which `--config` composes back to the same config)."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq_es import config as config_module
from seq2seq_es.cli import USAGE, build_config, main
from seq2seq_es.config import RunConfig, compose, parse_overrides
from seq2seq_es.config_help import format_value, key_docs, parse_field_comments

SECTION_CLASSES = {f.name: type(getattr(RunConfig(), f.name)) for f in dataclasses.fields(RunConfig)}


def every_field():
    """(section, field) of every section dataclass, with the annotation as written in config.py
    (a string: config.py uses `from __future__ import annotations`) and the default."""
    for section, cls in SECTION_CLASSES.items():
        instance = cls()
        for f in dataclasses.fields(cls):
            yield section, f.name, f.type, getattr(instance, f.name)


def shown_type(annotation: str) -> str:
    """The type help shows: the annotation as written, a Literal as its choices."""
    return re.sub(r"Literal\[([^\]]*)\]", lambda m: " | ".join(
        choice.strip().strip("'\"") for choice in m.group(1).split(",")), annotation)


def cli_out(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_help_lists_every_key_with_its_type_and_default(capsys):
    code, out, _ = cli_out(capsys, ["train", "--help"])
    assert code == 0
    lines = out.splitlines()
    fields = list(every_field())
    assert len(fields) > 60
    for section, name, annotation, default in fields:
        assert isinstance(annotation, str)
        expected = f"  --{section}.{name} ({shown_type(annotation)}, default: " \
                   f"{format_value(default)})"
        assert expected in lines, expected
    # Nothing else is listed as a key, and each key once.
    keys = [line.split()[0] for line in lines if line.startswith("  --") and "." in line.split()[0]]
    assert sorted(keys) == sorted(f"--{s}.{n}" for s, n, _, _ in fields)
    assert out.startswith("usage: seq2seq-es train")


def test_help_meanings_are_config_py_comments_with_their_continuation_lines(capsys):
    _, out, _ = cli_out(capsys, ["train", "-h"])
    flat = " ".join(out.split())  # meanings may be wrapped
    # A one-line comment.
    assert "--train.keep_last (int, default: 2) newest checkpoints kept (the best one is always " \
           "kept)" in flat
    # Comments continued on the next line belong to the field above.
    assert "--train.precision (auto | bf16 | fp16 | fp32, default: auto) auto: bf16 where the " \
           "GPU supports it, else fp16; fp32 on CPU. fp16: dynamic loss scaling" in flat
    assert "in (bf16: less memory, less exact); the reductions between ranks stay bf16 " \
           "--dist.timeout_min" in flat
    docs = {doc.key: doc for doc in key_docs()}
    assert docs["train.best_metric"].meaning.endswith('"loss": lowest eval loss)')
    # The meanings are read from config.py itself, not a copy.
    source = Path(config_module.__file__).read_text(encoding="utf-8")
    assert "# trackers, comma-separated: tensorboard, wandb; none" in source
    assert docs["train.report_to"].meaning == "trackers, comma-separated: tensorboard, wandb; none"


def test_comment_parser_attaches_continuations_and_nothing_else():
    source = '''
from dataclasses import dataclass

@dataclass
class A:
    x: int = 1              # first line
                            # second line
    # a heading comment at field indentation belongs to no field
    y: str | None = None
    z: tuple[int, int] = (1,
                          2)  # after a statement spanning two lines

    w: float = 0.5          # one
class B:
    v: bool = True          # other class
'''
    parsed = parse_field_comments(source)
    assert parsed["A"] == {"x": ("int", "first line second line"), "y": ("str | None", ""),
                           "z": ("tuple[int, int]", "after a statement spanning two lines"),
                           "w": ("float", "one")}
    assert parsed["B"] == {"v": ("bool", "other class")}


def test_every_key_has_a_meaning():
    missing = {doc.key for doc in key_docs() if not doc.meaning}
    assert not missing, f"config.py fields without a # comment: {missing}"


@pytest.mark.parametrize("task, model, key, line", [
    ("mlsum", "barto", "data.max_source_length", "(int, default: 1024, from task mlsum)"),
    ("mlsum", "barto", "gen.max_new_tokens",
     "(int | None, default: 48, follows data.max_target_length)"),
    ("sqac", "betoshare", "data.max_source_length",
     "(int, default: 480, from task sqac x model betoshare)"),
])
def test_help_with_task_and_model_shows_the_pairs_defaults(capsys, task, model, key, line):
    code, out, _ = cli_out(capsys, ["train", "--help", "--task", task, "--model", model,
                                    "--optim.lr", "3e-5"])
    assert code == 0
    assert f"  --{key} {line}" in out.splitlines()
    assert "  --optim.lr (float, default: 3e-05, from command line)" in out.splitlines()
    assert f"defaults resolved for task {task}, model {model}" in out


@pytest.mark.parametrize("argv", [
    ["train", "--task", "mlsum", "--model", "barto-tiny", "--optim.lrr", "1"],
    ["train", "--help", "--task", "mlsum", "--model", "barto", "--optim.lrr", "1"],
    ["config", "--task", "mlsum", "--model", "barto", "--optim.lrr", "1"],
])
def test_an_unknown_key_still_errors(capsys, argv):
    code, out, err = cli_out(capsys, argv)
    assert code == 2 and out == ""
    assert err.startswith("error: config key 'optim.lrr': unknown key; keys of 'optim': lr,")


@pytest.mark.parametrize("given, says", [
    # a Hugging Face Trainer name, which no near-miss match finds
    (["--train.save_total_limit", "2"], "; the Trainer's save_total_limit is train.keep_last here"),
    (["--optim.learning_rate", "1e-4"], "; the Trainer's learning_rate is optim.lr here"),
    (["--train.eval_steps", "5"], "; the Trainer's eval_steps is train.eval_every here"),
    (["--num_train_epochs", "3"], "expected a dotted option such as --optim.lr 3e-5; the "
                                  "Trainer's num_train_epochs is train.epochs here"),
    # a key of another section
    (["--train.gradient_checkpointing", "true"],
     "; 'gradient_checkpointing' is a key of section model: model.gradient_checkpointing"),
    (["--train.num_beams", "2"], "; 'num_beams' is a key of section gen: gen.num_beams"),
    # a launcher's option given after the script: the launcher never saw it
    (["--nproc_per_node", "2"], "; --nproc_per_node is an option of the launcher (torchrun, "
                                "deepspeed or accelerate launch): give it before the script or "
                                "-m seq2seq_es, not after"),
    (["--num_processes=2"], "; --num_processes is an option of the launcher (torchrun, "
                            "deepspeed or accelerate launch): give it before the script or "
                            "-m seq2seq_es, not after"),
])
def test_an_unknown_key_names_where_a_trainer_user_finds_it(capsys, given, says):
    code, out, err = cli_out(capsys, ["train", "--task", "mlsum", "--model", "barto-tiny", *given])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.strip().endswith(says), err


@pytest.mark.parametrize("argv, says", [
    # a key without its section, and a near miss of the command's own flag
    (["train", "--task", "mlsum", "--model", "barto-tiny", "--lr", "1e-3"],
     "error: argument --lr: expected a dotted option such as --optim.lr 3e-5; did you mean "
     "--optim.lr?"),
    (["train", "--tsk", "mlsum"], "error: argument --tsk: expected a dotted option such as "
                                  "--optim.lr 3e-5; did you mean --task?"),
    (["evaluate", "runs/x", "--splt", "test"], "; did you mean --split?"),
    (["predict", "runs/x", "--input", "a", "--output", "b", "--overwrit"],
     "; did you mean --overwrite?"),
    (["trian", "--task", "mlsum"], "error: unknown command 'trian'; did you mean 'train'? the "
                                   "commands:"),
])
def test_a_mistyped_flag_or_command_gets_a_suggestion(capsys, argv, says):
    code, out, err = cli_out(capsys, argv)
    assert code == 2 and out == ""
    assert says in err.splitlines()[0], err


def test_list_has_its_own_help_and_refuses_an_argument(capsys):
    # `list --help` printed the list, and `list x` too
    with pytest.raises(SystemExit) as exited:
        main(["list", "--help"])
    assert exited.value.code == 0 and "usage: seq2seq-es list" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["list", "mlsum"])
    assert exited.value.code == 2 and "unrecognized arguments: mlsum" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--task", "mlsum", "--model", "barto"],
    ["--task", "sqac", "--model", "betoshare", "--optim.betas", "0.8,0.95",
     "--train.best_metric", "token_f1", "--gen.max_new_tokens", "20", "--data.max_target_length", "24"],
    ["--task", "mlsum", "--model", "ledo", "--data.max_target_length", "16",
     "--train.report_to", "tensorboard,wandb", "--train.push_to_hub", "me/ledo-mlsum",
     "--data.cache_dir", "/tmp/a b: c"],
])
def test_the_printed_yaml_composes_the_same_config_through_config(capsys, tmp_path, argv):
    code, printed, _ = cli_out(capsys, ["config", *argv])
    assert code == 0
    path = tmp_path / "resolved.yaml"
    path.write_text(printed, encoding="utf-8")
    direct = build_config(argv)
    # Through train's own path (cli.build_config), alone and under a command-line key.
    assert build_config(["--config", str(path)]).to_dict() == direct.to_dict()
    assert build_config(["--config", str(path), "--train.seed", "7"]).to_dict() == \
        build_config([*argv, "--train.seed", "7"]).to_dict()
    # And printing again from the file gives the same values.
    _, again, _ = cli_out(capsys, ["config", "--config", str(path)])
    assert compose(config_file=str(path)).to_yaml() == direct.to_yaml()
    strip = lambda text: [line.split("  #")[0] for line in text.splitlines()
                          if not line.startswith("#")]
    assert strip(again) == strip(printed)
    # A generation length that follows the target length still follows it from the file.
    longer = ["--data.max_target_length", "40"]
    assert build_config(["--config", str(path), *longer]).gen.max_new_tokens == \
        build_config([*argv, *longer]).gen.max_new_tokens
    # A shorter one lowers the task's minimum from the file too (the file's restated minimum
    # counted as chosen: "10 is larger than gen.max_new_tokens 6" for mlsum's 8 or xlsum's 10).
    shorter = ["--data.max_target_length", "6"]
    from_file = build_config(["--config", str(path), *shorter])
    assert from_file.to_dict() == build_config([*argv, *shorter]).to_dict()
    code, again, _ = cli_out(capsys, ["config", "--config", str(path), *shorter])
    assert code == 0
    assert any(line.startswith("  min_new_tokens: ") and line.endswith(
        "  # lowered to gen.max_new_tokens") for line in again.splitlines()) == \
        ("--gen.max_new_tokens" not in argv)


def test_config_shows_where_the_task_and_model_defaults_come_from(capsys):
    code, out, _ = cli_out(capsys, ["config", "--task", "sqac", "--model", "betoshare",
                                    "--optim.lr", "3e-5"])
    assert code == 0
    lines = out.splitlines()
    assert "  max_source_length: 480  # task sqac x model betoshare" in lines
    assert "  name: betoshare" in lines and "  task: sqac" in lines
    assert "  lr: 3.0e-05  # command line" in lines
    assert "  betas: [0.9, 0.999]" in lines
    assert "  best_metric: null  # the task's main metric: rougeL" in lines
    # Every key of every section is in the YAML.
    for section, name, _, _ in every_field():
        assert any(line.startswith(f"  {name}:") for line in lines), f"{section}.{name}"
    assert "config --task T --model M" in USAGE


def test_the_installed_command_prints_the_help():
    script = Path(sys.executable).parent / "seq2seq-es"
    proc = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "  --train.report_to (str, default: tensorboard)" in proc.stdout
    assert parse_overrides(["--train.report_to", "none"]) == {"train.report_to": "none"}


def test_list_shows_each_tasks_columns_and_main_metric(capsys):
    # A user with local files needs the columns (and nested keys) before the first run fails.
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "main: rougeL  metrics: rouge, exact_match, token_f1" in out
    assert "columns: question, context, answers{text}" in out
    assert "columns: translation{en, es}" in out and "columns: Speaker, Utterance, Dialogue_ID" in out
    # every fixture folder it points to is there (wmt13-es-en's rows are in wmt13/)
    from pathlib import Path
    fixtures = Path(__file__).parent / "fixtures"
    assert "tests/fixtures/<task>/ (wmt13/ and fapesp/ for the translation tasks" in out
    from seq2seq_es.tasks import TASKS
    for name in TASKS:
        folder = name.split("-")[0] if name.startswith(("wmt13-", "fapesp-")) else name
        assert (fixtures / folder).is_dir(), name


def test_export_and_convert_led_name_the_cpu_accelerator_instead_of_deepspeeds_warning():
    # A walkthrough saw DeepSpeed's "Setting accelerator to CPU ... we were unable to detect it"
    # on every export and convert-led (commands that import DeepSpeed without a process group).
    code = ("from seq2seq_es.cli import _deepspeed_on_cpu_quietly as quiet\n"
            "{call}\n"
            "from deepspeed.accelerator import get_accelerator\n"
            "print(get_accelerator().device_name())")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    said = {}
    for name, call in (("quiet", "quiet()"), ("plain", "pass")):
        proc = subprocess.run([sys.executable, "-c", code.format(call=call)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        said[name] = proc.stdout + proc.stderr
    assert "unable to detect" in said["plain"]  # what DeepSpeed says on its own here
    assert "unable to detect" not in said["quiet"] and said["quiet"].strip().endswith("cpu")
