"""Bad config input refused before any work, in one line naming the key: values a section's
`validate()` cannot take (negative sizes, nan/inf, betas, seeds), run files that set a key twice
or put a key at the top level, dotted options without a value, folders that are files, and
near-miss names."""

import pytest

from seq2seq_es.cli import main
from seq2seq_es.config import compose, parse_overrides, read_yaml
from seq2seq_es.errors import ConfigError, UnknownNameError
from seq2seq_es.models import get_model_spec
from seq2seq_es.tasks import get_task


def refused(overrides=None, config_file=None, task="mlsum", model="barto-tiny"):
    with pytest.raises(ConfigError) as err:
        compose(task=task, model=model, config_file=config_file,
                overrides=parse_overrides(overrides or []))
    return err.value


@pytest.mark.parametrize("key, value, expected", [
    ("train.eval_batch_size", "-4", "must be >= 0 (0: same as train.batch_size), got -4"),
    ("optim.betas", "1.5,0.9", "each beta must be in [0, 1)"),
    ("optim.betas", "0.9,1", "each beta must be in [0, 1)"),
    ("optim.betas", "-0.1,0.9", "each beta must be in [0, 1)"),
    ("optim.eps", "-1", "must be positive"),
    ("optim.eps", "0", "must be positive"),
    ("optim.lr", "nan", "must be a finite number, got nan"),
    ("optim.lr", "inf", "must be a finite number, got inf"),
    ("optim.lr", "1e999", "must be a finite number, got inf"),
    ("optim.lr", "0", "must be positive"),
    ("train.seed", "-1", "must be in [0, 4294967295]"),
    ("train.seed", str(2**32), "must be in [0, 4294967295]"),
    ("optim.weight_decay", "-1", "must be >= 0"),
    ("optim.max_grad_norm", "-1", "must be >= 0 (0 disables clipping)"),
    ("optim.max_grad_norm", "inf", "must be a finite number"),
    ("train.save_every_min", "nan", "must be a finite number, got nan"),
    ("train.save_every_min", "-1", "must be >= 0"),
    ("dist.timeout_min", "0", "must be >= 1"),
    ("model.dropout", "nan", "must be a finite number"),
    ("optim.warmup_ratio", "nan", "must be a finite number"),
    ("gen.length_penalty", "nan", "must be a finite number"),
    ("gen.length_penalty", "-inf", "must be a finite number"),
    ("gen.min_new_tokens", "-1", "must be >= 0"),
    ("gen.no_repeat_ngram_size", "-2", "must be >= 0 (0: off)"),
    # An integer field given inf or nan was an OverflowError / ValueError traceback.
    ("train.epochs", "inf", "expected an integer, got 'inf'"),
    ("train.batch_size", "nan", "expected an integer, got 'nan'"),
])
def test_values_that_would_crash_later_or_mean_nothing_are_refused(key, value, expected):
    error = refused([f"--{key}", value])
    assert error.key == key
    assert str(error).startswith(f"config key '{key}': ") and expected in str(error), str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize("key, value, attribute, expected", [
    ("train.eval_batch_size", "0", "eval_batch_size", 0),       # 0: same as batch_size
    ("optim.betas", "0,0.999", "betas", (0.0, 0.999)),
    ("optim.max_grad_norm", "0", "max_grad_norm", 0.0),         # 0 disables clipping
    ("optim.weight_decay", "0", "weight_decay", 0.0),
    ("optim.lr", "1e-9", "lr", 1e-9),
    ("train.save_every_min", "0", "save_every_min", 0.0),      # 0: off
    ("train.seed", "0", "seed", 0),
    ("train.seed", str(2**32 - 1), "seed", 2**32 - 1),
    ("dist.timeout_min", "1", "timeout_min", 1),
    ("gen.length_penalty", "-0.5", "length_penalty", -0.5),    # < 1 favours shorter outputs
    ("train.epochs", "3.0", "epochs", 3),
])
def test_the_edges_of_each_range_are_accepted(key, value, attribute, expected):
    cfg = compose("mlsum", "barto-tiny", overrides=parse_overrides([f"--{key}", value]))
    assert getattr(getattr(cfg, key.split(".")[0]), attribute) == expected


def test_a_float_field_refuses_a_boolean(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: true\n", encoding="utf-8")
    assert refused(config_file=str(path)).key == "optim.lr"


def test_a_key_set_twice_in_a_run_file_names_the_key_the_file_and_both_lines(tmp_path):
    section = tmp_path / "section.yaml"
    section.write_text("optim:\n  lr: 3.0e-5\ntrain:\n  epochs: 2\noptim:\n  lr: 1.0\n")
    error = refused(config_file=str(section))
    assert error.key == "optim"
    assert f"file {section} has it twice, on lines 1 and 5; merge the two" in str(error)
    key = tmp_path / "key.yaml"
    key.write_text("optim:\n  lr: 3.0e-5\n  eps: 1.0e-8\n  lr: 1.0\n")
    error = refused(config_file=str(key))
    assert error.key == "optim.lr" and "on lines 2 and 4; keep one" in str(error)
    # A flat dotted key and the same key under its section are one key.
    flat = tmp_path / "flat.yaml"
    flat.write_text("optim.lr: 3.0e-5\noptim:\n  lr: 1.0\n")
    error = refused(config_file=str(flat))
    assert error.key == "optim.lr" and "on lines 1 and 3" in str(error)
    # `seq2seq-es config`, and so `train --help --config`, read the file the same way.
    code = main(["config", "--task", "mlsum", "--model", "barto-tiny", "--config", str(key)])
    assert code == 2


def test_yaml_merge_keys_and_aliases_are_no_duplicates(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b\n  lr: 1\noptim:\n  <<: *b\n  lr: 2\nother: *b\n")
    assert read_yaml(path) == {"base": {"lr": 1}, "optim": {"lr": 2}, "other": {"lr": 1}}


def test_a_dotted_option_without_a_value_is_named_not_taken_as_the_value():
    with pytest.raises(ConfigError) as err:
        parse_overrides(["--optim.lr", "--train.batch_size", "2"])
    assert err.value.key == "optim.lr"
    assert "no value given (the next argument is --train.batch_size)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_overrides(["--train.batch_size", "2", "--optim.lr"])
    assert err.value.key == "optim.lr" and "no value given" in str(err.value)
    # Negative numbers (also with an exponent) are values.
    assert parse_overrides(["--optim.lr", "-1", "--gen.length_penalty", "-1e-3",
                            "--optim.eps=--x"]) == {
        "optim.lr": "-1", "gen.length_penalty": "-1e-3", "optim.eps": "--x"}


def test_cli_says_which_option_has_no_value(capsys):
    code = main(["config", "--task", "mlsum", "--model", "barto-tiny", "--optim.lr",
                 "--train.batch_size", "2"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: config key 'optim.lr': no value given (the next argument is "
        "--train.batch_size); give one: --optim.lr VALUE"]


def test_config_given_a_folder_says_it_is_a_folder(tmp_path):
    error = refused(config_file=str(tmp_path))
    assert error.key == "--config"
    assert f"{tmp_path} is a folder; expected a YAML file" in str(error)
    assert "does not exist" in str(refused(config_file=str(tmp_path / "nope.yaml")))


def test_a_key_at_the_top_of_a_run_file_is_an_unknown_section_with_its_place(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 3.0e-5\n")
    error = refused(config_file=str(path))
    assert error.key == "lr"
    text = str(error)
    assert "unknown section 'lr'; sections: model, data, optim, train, dist, gen" in text
    assert "'lr' is a key of section optim: write 'optim:' with 'lr: 3e-05' indented" in text
    assert "must hold keys" not in text and "\n" not in text
    path.write_text("optimm:\n  lr: 3.0e-5\n")
    error = refused(config_file=str(path))
    assert error.key == "optimm" and str(error).endswith("did you mean optim?")
    path.write_text("data:\n  task: mlsum\nfoo: 1\n")
    assert refused(config_file=str(path)).key == "foo"


def test_unknown_names_suggest_close_ones_and_list_the_known():
    with pytest.raises(UnknownNameError) as err:
        get_task("mlsun")
    assert str(err.value).startswith("unknown task 'mlsun'; did you mean 'mlsum'")
    assert "known tasks: bisect, " in str(err.value)
    with pytest.raises(UnknownNameError) as err:
        get_model_spec("bart0")
    assert "did you mean 'barto'" in str(err.value) and "known models: barto, " in str(err.value)
    with pytest.raises(UnknownNameError) as err:
        get_model_spec("nope")
    assert str(err.value).startswith("unknown model 'nope'; known models: ")
    assert "did you mean" not in str(err.value)


def test_an_unknown_key_or_section_suggests_a_near_miss():
    error = refused(["--optim.lrr", "1"])
    assert error.key == "optim.lrr" and str(error).endswith("; did you mean optim.lr?")
    error = refused(["--tran.epochs", "1"])
    assert error.key == "tran.epochs" and str(error).endswith("; did you mean train?")


def test_an_unknown_key_suggests_a_near_miss_of_another_section(tmp_path):
    # --train.lrr listed train's keys and suggested nothing: optim.lr is no key of train
    error = refused(["--train.lrr", "1"])
    assert error.key == "train.lrr" and str(error).endswith("; did you mean optim.lr?")
    assert "keys of 'train': output_dir, " in str(error)
    # the section's own near misses come first
    error = refused(["--gen.beams", "1"])
    assert str(error).endswith("; did you mean gen.num_beams or optim.betas?")
    error = refused(["--train.epoch", "1"])
    assert str(error).endswith("; did you mean train.epochs?")
    # a run file's key nested under the wrong section, too
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lrr: 3.0e-5\n")
    error = refused(config_file=str(path))
    assert error.key == "train.lrr" and "did you mean optim.lr? (in " in str(error)


def test_a_folder_key_that_names_a_file_is_refused_before_loading(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    error = refused(["--train.output_dir", str(a_file)])
    assert error.key == "train.output_dir"
    assert f"{a_file} is a file; expected a folder" in str(error)
    error = refused(["--train.output_dir", str(a_file / "run")])
    assert error.key == "train.output_dir" and f"{a_file} is a file" in str(error)
    error = refused(["--data.cache_dir", str(a_file)])
    assert error.key == "data.cache_dir" and "is a file; expected a folder" in str(error)
    # Folders that exist, or do not exist yet, are fine.
    cfg = compose("mlsum", "barto-tiny", overrides={"train.output_dir": str(tmp_path / "a" / "b"),
                                                    "data.cache_dir": str(tmp_path)})
    assert cfg.train.output_dir == str(tmp_path / "a" / "b")


def test_a_warmup_as_long_as_the_run_is_refused():
    # A warmup of exactly max_steps steps was accepted: the run ends before the learning rate
    # reaches its peak, and the schedule after warmup never runs.
    error = refused(["--train.max_steps", "10", "--optim.warmup_steps", "10"])
    assert error.key == "optim.warmup_steps"
    assert "warmup of 10 steps is not shorter than training (10 steps)" in str(error)
    cfg = compose("mlsum", "barto-tiny", overrides={"train.max_steps": "10",
                                                    "optim.warmup_steps": "9"})
    assert cfg.optim.warmup_steps == 9


@pytest.mark.parametrize("value", ["none,tensorboard", "wandb, none"])
def test_report_to_none_beside_a_tracker_is_refused(value):
    # "none,tensorboard" was accepted: it both asks for no tracker and for one, and a run
    # logged to TensorBoard although the user's list began by turning trackers off.
    error = refused(["--train.report_to", value])
    assert error.key == "train.report_to"
    assert f"or none; got {value!r}" in str(error)
    assert compose("mlsum", "barto-tiny", overrides={
        "train.report_to": "tensorboard,wandb"}).train.report_to == "tensorboard,wandb"


@pytest.mark.parametrize("key, value, names", [
    ("train.report_to", "tensorboard,", "tensorboard"),
    ("train.report_to", "tensorboard,,wandb", "tensorboard,wandb"),
])
def test_an_empty_name_in_a_comma_list_is_refused(key, value, names):
    # "rouge,,bleu" or a trailing comma: a name lost in typing was read as nothing, and the run
    # went on without it.
    error = refused([f"--{key}", value])
    assert error.key == key
    assert f"has an empty name between commas ({value!r}); did you mean '{names}'?" in str(error)


def test_skipping_bad_micro_batches_under_zero_3_is_refused():
    # Accepted, a run under ZeRO-3 met its first nan loss only to fail there (the zero loss
    # needs unpartitioned parameters), possibly hours in.
    error = refused(["--train.on_nan", "skip", "--dist.zero_stage", "3"])
    assert error.key == "train.on_nan" and "skip is not supported under ZeRO-3" in str(error)
    assert compose("mlsum", "barto-tiny", overrides={
        "train.on_nan": "skip", "dist.zero_stage": "2"}).train.on_nan == "skip"
