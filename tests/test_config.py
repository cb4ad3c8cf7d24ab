"""Config composition (defaults < task < model < YAML < command line) and validation."""

import json
import os

import pytest

from seq2seq_es.cli import build_config, main
from seq2seq_es.config import compose, parse_overrides
from seq2seq_es.engine.distributed import launcher_overrides
from seq2seq_es.errors import ConfigError, UnknownNameError
from seq2seq_es.models import get_model_spec
from seq2seq_es.tasks import get_task


def test_task_then_model_defaults_then_yaml_then_command_line(tmp_path):
    task = get_task("mlsum")
    cfg = compose(task="mlsum", model="barto")
    assert cfg.data.max_source_length == task.defaults["data.max_source_length"]
    assert cfg.optim.lr == task.defaults["optim.lr"]
    # BERT2BERT models read fewer source tokens than the task asks of BART.
    bert = compose(task="mlsum", model="beto2beto")
    assert bert.data.max_source_length == get_model_spec("beto2beto").defaults[
        "data.max_source_length"]
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("optim:\n  lr: 1.0e-4\ntrain:\n  epochs: 2\n")
    cfg = compose(task="mlsum", model="barto", config_file=str(yaml_file),
                  overrides=parse_overrides(["--optim.lr", "3e-5", "--train.batch_size=4"]))
    assert cfg.optim.lr == 3e-5            # command line beats YAML
    assert cfg.train.epochs == 2           # YAML beats task defaults
    assert cfg.train.batch_size == 4


@pytest.mark.parametrize("overrides, key", [
    (["--optim.lrr", "1"], "optim.lrr"),
    (["--train.batch_size", "x"], "train.batch_size"),
    (["--dist.zero_stage", "4"], "dist.zero_stage"),
    (["--train.grad_accum", "0"], "train.grad_accum"),
    (["--data.max_source_length", "4096"], "data.max_source_length"),
    (["--train.max_steps", "10", "--optim.warmup_steps", "40"], "optim.warmup_steps"),
    (["--model.attention", "fast"], "model.attention"),
    (["--nosection", "1"], "--nosection"),
])
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        compose(task="mlsum", model="barto", overrides=parse_overrides(overrides))
    assert err.value.key == key
    assert key in str(err.value)


def test_a_token_budget_without_budget_is_refused_with_the_fixed_batches_size():
    # mlsum x barto: 1024 source + 48 target tokens at the batch of 16 -> 17152
    for batching in ("bucketed", "token_budget"):
        with pytest.raises(ConfigError, match=r"needs a positive budget.*; 17152 is what a fixed "
                           r"batch of train.batch_size 16") as err:
            compose(task="mlsum", model="barto", overrides={"train.batching": batching})
        assert err.value.key == "train.max_tokens"
    cfg = compose(task="mlsum", model="barto",
                  overrides={"train.batching": "bucketed", "train.max_tokens": "9216"})
    assert cfg.train.max_tokens == 9216


def test_unknown_model_and_task_list_the_known_ones():
    with pytest.raises(UnknownNameError, match="barto"):
        compose(task="mlsum", model="bart0")
    with pytest.raises(UnknownNameError, match="wikilingua"):
        compose(task="wikilinguaa", model="barto")


def test_task_model_or_config_given_twice_is_refused_not_last_wins(capsys):
    for argv in (["--task", "mlsum", "--task", "sqac", "--model", "barto-tiny"],
                 ["--task", "mlsum", "--model=barto-tiny", "--model", "t5s-tiny"]):
        assert main(["config", *argv]) == 2
        flag = "--task" if argv.count("--task") == 2 else "--model"
        assert f"error: argument {flag}: given 2 times; give it once" in capsys.readouterr().err


def test_train_notes_settings_it_does_not_read_once(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run_file = tmp_path / "run.yaml"
    run_file.write_text("data:\n  global_attention: sentences\n")
    build_config(["--task", "mlsum", "--model", "beto2beto-tiny", "--config", str(run_file),
                  "--model.attention", "flex", "--train.max_steps", "5"])
    err = capsys.readouterr().err
    assert err.count("note: not read by this run:") == 1
    assert "data.global_attention (beto2beto-tiny is no LED)" in err  # from the run file
    assert "model.attention (beto2beto-tiny has no attention implementations)" in err
    assert "train.epochs" not in err  # a default, not the user's
    build_config(["--task", "xlsum", "--model", "ledo-tiny", "--data.global_attention", "prefix:4"])
    assert capsys.readouterr().err == ""
    # A run file that restates defaults (`seq2seq-es config` output fed back) chose nothing.
    assert main(["config", "--task", "mlsum", "--model", "barto-tiny"]) == 0
    restated = tmp_path / "restated.yaml"
    restated.write_text(capsys.readouterr().out)
    build_config(["--config", str(restated)])
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "1")  # other ranks say nothing (torchrun sets both)
    monkeypatch.setenv("WORLD_SIZE", "2")
    build_config(["--task", "mlsum", "--model", "beto2beto-tiny", "--model.attention", "flex"])
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="prefix:N with N >= 1"):
        compose(task="xlsum", model="ledo-tiny", overrides={"data.global_attention": "prefix:0"})


def test_led_accepts_sixteen_thousand_source_tokens_bart_does_not():
    cfg = compose(task="xlsum", model="ledo",
                  overrides={"data.max_source_length": "16384"})
    assert cfg.data.max_source_length == 16384
    with pytest.raises(ConfigError, match="positions"):
        compose(task="xlsum", model="barto", overrides={"data.max_source_length": "16384"})


def test_every_registry_model_composes_on_every_task_with_its_defaults():
    """A pair the paper did not run still composes: no default refused against the model's
    positions (mBERT on EUR-Lex was refused for a 1024-token target the user never set)."""
    from seq2seq_es.models.registry import MODELS
    from seq2seq_es.tasks.registry import TASKS

    for model in (name for name in MODELS if not name.endswith("-tiny")):
        for task in TASKS:
            cfg = compose(task=task, model=model)
            if model.startswith(("beto", "roberta", "mbert")):
                assert max(cfg.data.max_source_length, cfg.data.max_target_length) <= 512, \
                    (model, task)
    # the BERT2BERT recipe of the paper's long-summarization runs, mBERT's too
    for model in ("beto2beto", "mbert2mbert", "mbertshare"):
        assert compose(task="eurlexsum", model=model).data.max_target_length == 512
        assert compose(task="xlsum", model=model).data.max_target_length == 64


def test_accelerate_environment_feeds_config_below_command_line():
    env = {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_MIXED_PRECISION": "bf16",
           "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}
    assert launcher_overrides(env) == {"dist.zero_stage": "3", "train.precision": "bf16",
                                       "train.grad_accum": "2"}
    assert launcher_overrides({"ACCELERATE_MIXED_PRECISION": "no"}) == {}


def test_cli_reports_one_error_line(capsys, monkeypatch):
    code = main(["train", "--task", "mlsum", "--model", "barto", "--optim.lr", "-1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config key 'optim.lr': must be positive"]


def test_deepspeed_launcher_local_rank_argument_is_accepted():
    cfg = build_config(["--local_rank=1", "--task", "sqac", "--model", "t5s-tiny"])
    assert cfg.data.task == "sqac" and cfg.model.name == "t5s-tiny"


def test_reference_deepspeed_configs_are_what_the_builder_writes(tmp_path):
    import json
    from pathlib import Path

    from seq2seq_es.engine.optim import write_reference_configs

    repo_configs = Path(__file__).resolve().parent.parent / "configs" / "deepspeed"
    for written in write_reference_configs(tmp_path):
        committed = json.loads((repo_configs / written.name).read_text())
        assert committed == json.loads(written.read_text()), written.name
        assert "\"auto\"" not in written.read_text()
        # bf16 references: ZeRO 1-3 accumulate gradients in fp32 (dist.grad_accum_dtype's
        # default), ZeRO 0 runs autocast over fp32 weights; no fp16 section is on.
        assert committed["data_types"] == {"grad_accum_dtype": "fp32"}, written.name
        stage = committed["zero_optimization"]["stage"]
        assert committed["bf16"]["enabled"] == (stage > 0), written.name
        assert committed["torch_autocast"]["enabled"] == (stage == 0), written.name
        assert committed["fp16"] == {"enabled": False}, written.name


def test_user_deepspeed_config_may_not_leave_values_to_guess(tmp_path):
    extra = tmp_path / "ds.json"
    extra.write_text('{"zero_optimization": {"reduce_bucket_size": "auto"}}')
    cfg = compose(task="mlsum", model="barto-tiny", overrides={"dist.deepspeed_config": str(extra)})
    from seq2seq_es.engine.optim import deepspeed_config
    with pytest.raises(ConfigError, match="reduce_bucket_size"):
        deepspeed_config(cfg, world_size=1)
    extra.write_text('{"zero_optimization": {"reduce_bucket_size": 1000}}')
    assert deepspeed_config(cfg, 1)["zero_optimization"]["reduce_bucket_size"] == 1000


def test_a_misspelt_deepspeed_section_is_refused_and_an_unknown_one_left_to_deepspeed(tmp_path):
    # DeepSpeed ignores keys it does not know: "zero_optimizaton" trained at ZeRO 1 in silence.
    from seq2seq_es.engine.optim import deepspeed_config

    extra = tmp_path / "ds.json"
    cfg = compose(task="mlsum", model="barto-tiny", overrides={"dist.deepspeed_config": str(extra)})
    for typo, meant in (("zero_optimizaton", "zero_optimization"),
                        ("gradient_cliping", "gradient_clipping"), ("flops_profiller", "flops_profiler")):
        extra.write_text(json.dumps({typo: {"stage": 3}}))
        with pytest.raises(ConfigError, match=f"{extra} sets '{typo}', which DeepSpeed does not "
                                              f"know and would ignore; did you mean '{meant}'"):
            deepspeed_config(cfg, world_size=1)
    extra.write_text('{"some_future_section": {"enabled": true}, "bfloat16": {"enabled": false}}')
    assert deepspeed_config(cfg, 1)["some_future_section"] == {"enabled": True}
    extra.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        deepspeed_config(cfg, 1)


def test_a_bad_value_inside_a_deepspeed_section_is_refused_by_the_key(tmp_path):
    # A string bucket size or a misspelt key inside zero_optimization was a pydantic traceback
    # at deepspeed.initialize, after the data and the model had loaded.
    from seq2seq_es.engine.optim import deepspeed_config

    extra = tmp_path / "ds.json"
    cfg = compose(task="mlsum", model="barto-tiny", overrides={
        "dist.deepspeed_config": str(extra), "dist.zero_stage": "2"})
    for section, says in (
            ({"reduce_bucket_size": "big"}, "zero_optimization.reduce_bucket_size: Input should "
             "be a valid integer, unable to parse string as an integer (given 'big')"),
            ({"reduce_bucket_sise": 5}, "zero_optimization.reduce_bucket_sise: not an option "
             "DeepSpeed knows (did you mean 'reduce_bucket_size'?)")):
        extra.write_text(json.dumps({"zero_optimization": section}))
        with pytest.raises(ConfigError) as error:
            deepspeed_config(cfg, world_size=1)
        assert error.value.key == "dist.deepspeed_config"
        assert error.value.reason == f"{extra}: {says}"
    extra.write_text('{"zero_optimization": {"reduce_bucket_size": 1000, "overlap_comm": true}}')
    assert deepspeed_config(cfg, 2)["zero_optimization"]["overlap_comm"] is True


def test_generation_lengths_follow_the_resolved_target_length_unless_set(tmp_path):
    # mlsum's paper target is 48 tokens (min 8 generated); a longer target generates longer.
    assert compose("mlsum", "barto").gen.max_new_tokens == 48
    cfg = compose("mlsum", "barto", overrides={"data.max_target_length": "64"})
    assert (cfg.gen.max_new_tokens, cfg.gen.min_new_tokens) == (64, 8)
    # A target shorter than the task's minimum lowers the minimum instead of failing.
    cfg = compose("mlsum", "barto", overrides={"data.max_target_length": "6"})
    assert (cfg.gen.max_new_tokens, cfg.gen.min_new_tokens) == (6, 6)
    # Set explicitly (command line or YAML), gen.* wins and is checked.
    cfg = compose("mlsum", "barto", overrides={"data.max_target_length": "64",
                                               "gen.max_new_tokens": "20"})
    assert cfg.gen.max_new_tokens == 20
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("data:\n  max_target_length: 64\ngen:\n  max_new_tokens: 30\n")
    assert compose("mlsum", "barto", config_file=str(yaml_file)).gen.max_new_tokens == 30
    with pytest.raises(ConfigError, match="gen.min_new_tokens"):
        compose("mlsum", "barto", overrides={"gen.max_new_tokens": "4", "gen.min_new_tokens": "5"})


def test_packed_batches_are_refused_at_compose_time_for_led_and_bert2bert():
    assert compose("mlsum", "barto-tiny", overrides={"train.batching": "packed"}).train.batching \
        == "packed"
    for model in ("ledo-tiny", "beto2beto-tiny"):
        task = "xlsum" if model.startswith("ledo") else "mlsum"
        with pytest.raises(ConfigError, match="train.batching"):
            compose(task, model, overrides={"train.batching": "packed"})


def test_a_task_or_model_named_two_ways_is_refused(tmp_path):
    # The file's data.task used to be applied over --task's defaults: a run named mlsum trained
    # with sqac's lengths, silently. Agreeing names are fine.
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  task: mlsum\nmodel:\n  name: barto\n", encoding="utf-8")
    for task, model, overrides, key in (("sqac", None, {}, "data.task"),
                                        (None, "t5s", {}, "model.name"),
                                        (None, None, {"data.task": "sqac"}, "data.task")):
        with pytest.raises(ConfigError) as err:
            compose(task=task, model=model, config_file=str(path), overrides=overrides)
        assert err.value.key == key and "disagree" in str(err.value)
    with pytest.raises(ConfigError) as err:
        compose(task="mlsum", model="barto", overrides={"data.task": "sqac"})
    assert "--task mlsum and --data.task sqac disagree" in str(err.value)
    assert compose(task="mlsum", model="barto", config_file=str(path)) == \
        compose(task="mlsum", model="barto")


def test_a_flat_keyed_file_names_the_task_like_a_nested_one(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("data.task: sqac\nmodel.name: t5s\n", encoding="utf-8")
    assert compose(config_file=str(flat)) == compose(task="sqac", model="t5s")


def test_file_sections_empty_or_not_a_mapping_and_bad_values_name_the_file(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("data:\nmodel:\n  name: t5s\n", encoding="utf-8")
    assert compose(task="sqac", config_file=str(empty)).model.name == "t5s"
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("data: sqac\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        compose(config_file=str(scalar))
    assert err.value.key == "data" and str(scalar) in str(err.value)
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  max_source_length: long\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        compose(task="mlsum", model="barto", config_file=str(typo))
    # the line too, as an editor shows it
    assert err.value.key == "data.max_source_length" and f"(in {typo}, line 2)" in str(err.value)
    flat = tmp_path / "flat.yaml"
    flat.write_text("# the lengths\ndata.max_source_length: long\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        compose(task="mlsum", model="barto", config_file=str(flat))
    assert str(err.value).endswith(f"(in {flat}, line 2)")
    broken = tmp_path / "broken.yaml"  # YAML's own error names the file, not "<unicode string>"
    broken.write_text("optim:\n  lr: [1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        compose(task="mlsum", model="barto", config_file=str(broken))
    # one line, the file named once: where the parser stopped and what it was reading
    assert str(err.value).endswith("is not valid YAML: line 3, column 1: expected ',' or ']', "
                                   "but got '<stream end>' (while parsing a flow sequence that "
                                   "starts on line 2)")
    assert str(err.value).count(str(broken)) == 1 and "unicode string" not in str(err.value)


def test_inputs_that_would_fail_after_loading_are_refused_before_it(tmp_path):
    # A missing data file, DeepSpeed file or an unknown best metric used to surface after the
    # model was loaded and the splits tokenized (the metric: at the first validation).
    from seq2seq_es.engine.run_dir import check_inputs

    cfg = compose(task="mlsum", model="barto-tiny")
    check_inputs(cfg)
    text = tmp_path / "train.txt"  # no reader for its extension: it had no key in its error
    text.write_text("hola\n")
    empty = tmp_path / "test.jsonl"  # named no key, and only after the other splits were read
    empty.write_text("")
    for key, value, expected in (
            ("data.train_file", str(tmp_path / "nope.jsonl"), "does not exist"),
            ("data.test_file", str(empty), f"file {empty} is empty"),
            ("data.validation_file", str(text), f"file {text}: unsupported file extension "
                                                "'.txt'; use one of .jsonl, .json"),
            ("dist.deepspeed_config", str(tmp_path / "ds.json"), "does not exist"),
            ("train.best_metric", "rouge-L", "rouge1, rouge2, rougeL, rougeLsum")):
        bad = compose(task="mlsum", model="barto-tiny", overrides={key: value})
        with pytest.raises(ConfigError) as err:
            check_inputs(bad)
        assert err.value.key == key and expected in str(err.value), str(err.value)
    assert "sari" in str(pytest.raises(ConfigError, check_inputs, compose(
        task="bisect", model="barto-tiny", overrides={"train.best_metric": "rouge1"})).value)
    # A local training set without a validation file would be validated on the hub's dataset.
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    alone = compose(task="mlsum", model="barto-tiny", overrides={"data.train_file": str(train)})
    with pytest.raises(ConfigError, match="validation would come from the hub dataset "
                                          "reciTAL/mlsum; pass --data.validation_file FILE"):
        check_inputs(alone)


@pytest.mark.parametrize("supported", [False, True])
def test_fp16_under_zero_on_a_machine_without_it_is_refused_before_loading(monkeypatch,
                                                                           supported):
    # It was refused at deepspeed.initialize, after the data and the model had loaded.
    from deepspeed.accelerator import get_accelerator

    from seq2seq_es.engine.run_dir import check_inputs

    # what DeepSpeed's accelerator answers on this machine (oneDNN's fp16 kernels)
    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: supported)
    cfg = compose(task="mlsum", model="barto-tiny", overrides={
        "train.precision": "fp16", "dist.zero_stage": "2"})
    if supported:
        check_inputs(cfg)
        return
    with pytest.raises(ConfigError) as err:
        check_inputs(cfg)
    assert err.value.key == "train.precision" and "fp16 under ZeRO stage 2 is DeepSpeed's fp16 " \
        "mode, which this machine (cpu) does not support" in str(err.value)
    check_inputs(compose(task="mlsum", model="barto-tiny", overrides={  # ZeRO 0: autocast
        "train.precision": "fp16", "dist.zero_stage": "0"}))


def test_local_paths_are_kept_absolute_so_the_run_reads_them_from_anywhere(tmp_path, monkeypatch):
    # evaluate, predict and a resumed or requeued job read config.yaml from another folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_model").mkdir()
    cfg = compose(task="mlsum", model="barto-tiny", overrides={
        "data.train_file": "data/train.jsonl", "data.test_file": "~/test.jsonl",
        "model.path": "local_model", "dist.deepspeed_config": "ds.json"})
    assert cfg.data.train_file == str(tmp_path / "data" / "train.jsonl")
    assert cfg.data.test_file == os.path.expanduser("~/test.jsonl")
    assert cfg.model.path == str(tmp_path / "local_model")
    assert cfg.dist.deepspeed_config == str(tmp_path / "ds.json")
    hub = compose(task="mlsum", model="barto", overrides={"model.path": "someone/model"})
    assert hub.model.path == "someone/model"  # not a local folder: a hub id, as given


def test_each_pair_trains_into_its_own_folder_by_default():
    # One shared runs/default made a second pair's run a refused resume of the first's folder.
    assert compose(task="mlsum", model="barto").train.output_dir == "runs/barto-mlsum"
    assert compose(task="sqac", model="t5s").train.output_dir == "runs/t5s-sqac"
    assert compose(task="sqac", model="t5s", overrides={"train.output_dir": "x"}).train.output_dir \
        == "x"
