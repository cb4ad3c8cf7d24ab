"""Every setting of an accelerate config file is honoured or refused by name (issue 10 item 3).

`accelerate launch --config_file F` is run for real on a script that dumps its environment; each
field of F is then checked twice: what accelerate exported for it, and what `launcher_overrides`
makes of that environment (a config key, or an AccelerateConfigError naming the field).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seq2seq_es.config import compose
from seq2seq_es.engine.distributed import (ACCELERATE_DEEPSPEED_FIELDS, ACCELERATE_LAUNCHER_FIELDS,
                                           AccelerateConfigError, launcher_overrides)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))

# Written by the test: the settings the shipped files leave at none/false/'no'.
EXTRA_CONFIGS = {
    "fp16_offload.yaml": """
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 2
  gradient_accumulation_steps: 4
  gradient_clipping: 0.5
  offload_optimizer_device: cpu
  offload_param_device: cpu
  zero3_init_flag: true
  zero3_save_16bit_model: true
mixed_precision: fp16
machine_rank: 0
num_machines: 1
num_processes: 1
use_cpu: false
""",
    "zero3_bf16_extra.yaml": """
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 3
  offload_optimizer_device: nvme
  zero3_save_16bit_model: true
  stage3_max_live_parameters: 1000000
mixed_precision: bf16
num_machines: 1
num_processes: 1
""",
    "simple_cpu_dynamo.yaml": """
compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
dynamo_config:
  dynamo_backend: INDUCTOR
  dynamo_mode: max-autotune
mixed_precision: bf16
num_machines: 1
num_processes: 1
use_cpu: true
""",
}

DUMP = """import json, os, sys
if os.environ.get("RANK", "0") == "0":
    with open(sys.argv[1], "w") as f:
        json.dump(dict(os.environ), f)
"""


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """config file -> (its fields, the environment `accelerate launch` gave the script)."""
    folder = tmp_path_factory.mktemp("accelerate")
    script = folder / "dump.py"
    script.write_text(DUMP)
    files = list(SHIPPED)
    for name, text in EXTRA_CONFIGS.items():
        (folder / name).write_text(text.lstrip())
        files.append(folder / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    out = {}
    for path in files:
        dump = folder / f"{path.stem}.env.json"
        proc = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch",
                               "--config_file", str(path), str(script), str(dump)],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[path.name] = (yaml.safe_load(path.read_text()), json.loads(dump.read_text()))
    return out


def _fields(values: dict) -> dict[str, object]:
    """deepspeed_config.zero_stage style names of every setting in a config file."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _text(value) -> str:
    return str(value).lower()


# field -> (variable accelerate exports for it, what launcher_overrides does with the value):
# ("key", dotted key, value) | ("nothing",) | ("refused",)
def _expected(field: str, value, fields: dict, cuda: bool):
    precision = _text(fields.get("mixed_precision", "no"))
    if field == "mixed_precision":
        return "ACCELERATE_MIXED_PRECISION", (
            ("key", "train.precision", precision) if precision in ("bf16", "fp16") else
            ("nothing",) if precision == "no" else ("refused",))
    if field == "deepspeed_config.zero_stage":
        return "ACCELERATE_DEEPSPEED_ZERO_STAGE", ("key", "dist.zero_stage", str(value))
    if field == "deepspeed_config.gradient_accumulation_steps":
        return "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", ("key", "train.grad_accum", str(value))
    if field == "deepspeed_config.gradient_clipping":
        return "ACCELERATE_GRADIENT_CLIPPING", ("key", "optim.max_grad_norm", str(value))
    if field == "deepspeed_config.offload_optimizer_device":
        return "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", (
            ("key", "dist.offload_optimizer", "true" if value == "cpu" else "false")
            if value in ("cpu", "none") else ("refused",))
    if field == "deepspeed_config.offload_param_device":
        return "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", (
            ("nothing",) if value == "none" else ("refused",))
    if field == "deepspeed_config.zero3_init_flag":
        return "ACCELERATE_DEEPSPEED_ZERO3_INIT", ("refused",) if value else ("nothing",)
    if field == "deepspeed_config.zero3_save_16bit_model":
        return "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", (
            ("key", "train.export_dtype", precision) if value and precision != "no"
            else ("nothing",))
    if field == "distributed_type":
        return "ACCELERATE_USE_DEEPSPEED", ("nothing",)
    if field == "use_cpu":
        return "ACCELERATE_USE_CPU", ("refused",) if value and cuda else ("nothing",)
    if field == "dynamo_config.dynamo_backend":
        return "ACCELERATE_DYNAMO_BACKEND", (
            ("key", "model.compile", "true") if value == "INDUCTOR" else ("nothing",))
    if field == "dynamo_config.dynamo_mode":
        return "ACCELERATE_DYNAMO_MODE", ("nothing",) if value == "default" else ("refused",)
    if field.startswith("deepspeed_config.") \
            and field.split(".", 1)[1] not in ACCELERATE_DEEPSPEED_FIELDS:
        return "ACCELERATE_CONFIG_DS_FIELDS", ("refused",)
    assert field in ACCELERATE_LAUNCHER_FIELDS, f"{field}: no test says what happens to it"
    return None, ("nothing",)


def _exported(field: str, value, env: dict) -> None:
    """What accelerate itself exported for the field (read from its launch code, checked here)."""
    variable, _ = _expected(field, value, {}, cuda=False)
    if field == "distributed_type":
        assert env.get("ACCELERATE_USE_DEEPSPEED") == ("true" if value == "DEEPSPEED" else None)
    elif field == "num_processes":
        assert env.get("WORLD_SIZE", "1") == str(value)
    elif field == "machine_rank":
        assert env["GROUP_RANK"] == str(value)
    elif field == "use_cpu" and env.get("ACCELERATE_USE_DEEPSPEED") == "true":
        # accelerate's DeepSpeed launcher exports no use_cpu, and its Accelerator ignores it then
        assert "ACCELERATE_USE_CPU" not in env
    elif variable == "ACCELERATE_CONFIG_DS_FIELDS":
        assert field.split(".", 1)[1] in env[variable].split(",")
    elif variable == "ACCELERATE_GRADIENT_CLIPPING":
        assert float(env[variable]) == float(value)
    elif variable is not None:
        assert env[variable].lower() == _text(value), (field, env.get(variable))


@pytest.mark.slow  # `launched`: about ten `accelerate launch` subprocesses, 20 s
@pytest.mark.parametrize("cuda", [False, True])
def test_every_field_of_every_accelerate_config_is_honoured_or_refused_by_name(launched, cuda):
    for name, (values, env) in launched.items():
        fields = _fields(values)
        refused, honoured = [], {}
        for field, value in fields.items():
            _exported(field, value, env)
            variable, outcome = _expected(field, value, fields, cuda)
            if outcome[0] == "refused":
                refused.append((field, variable))
            elif outcome[0] == "key":
                honoured[outcome[1]] = outcome[2]
        if refused:
            with pytest.raises(AccelerateConfigError) as info:
                launcher_overrides(env, cuda=cuda)
            assert sorted(info.value.fields) == sorted(field for field, _ in refused), name
            for field, variable in refused:
                assert field in str(info.value) and "is not supported" in str(info.value)
            # without the refused settings, the rest is honoured
            env = {k: v for k, v in env.items()
                   if k not in {variable for _, variable in refused}}
            if any(v == "ACCELERATE_CONFIG_DS_FIELDS" for _, v in refused):
                env["ACCELERATE_CONFIG_DS_FIELDS"] = ",".join(
                    f for f in env.get("ACCELERATE_CONFIG_DS_FIELDS", "").split(",")
                    if f in ACCELERATE_DEEPSPEED_FIELDS)
        got = launcher_overrides(env, cuda=cuda)
        for key, value in honoured.items():
            assert got.get(key) == value, (name, key, got)
        # nothing else: every key set comes from a field of the file
        assert set(got) == set(honoured), (name, got, honoured)


@pytest.mark.slow
def test_the_shipped_configs_are_honoured_whole_and_the_command_line_still_wins(launched):
    for path in SHIPPED:
        values, env = launched[path.name]
        overrides = launcher_overrides(env, cuda=True)
        stage = values["deepspeed_config"]["zero_stage"]
        # No accumulation in the shipped files: each task keeps its own (the paper's batch).
        assert overrides == {"dist.zero_stage": str(stage), "dist.offload_optimizer": "false"}
        cfg = compose("mlsum", "barto-tiny", overrides={**overrides, "train.grad_accum": "3"})
        assert cfg.dist.zero_stage == stage and cfg.train.grad_accum == 3
        assert cfg.train.precision == "auto"  # mixed_precision 'no': bf16 on GPUs that have it


@pytest.mark.slow
def test_fp16_with_optimizer_offload_composes_into_the_run_config(launched):
    _, env = launched["fp16_offload.yaml"]
    env = {k: v for k, v in env.items() if k not in ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
                                                       "ACCELERATE_DEEPSPEED_ZERO3_INIT")}
    cfg = compose("mlsum", "barto-tiny", overrides=launcher_overrides(env, cuda=True))
    assert (cfg.train.precision, cfg.dist.zero_stage, cfg.dist.offload_optimizer) \
        == ("fp16", 2, True)
    assert (cfg.train.grad_accum, cfg.optim.max_grad_norm, cfg.train.export_dtype) \
        == (4, 0.5, "fp16")
    cli = compose("mlsum", "barto-tiny", overrides={**launcher_overrides(env, cuda=True),
                                                     "train.precision": "bf16",
                                                     "dist.offload_optimizer": "false"})
    assert cli.train.precision == "bf16" and cli.dist.offload_optimizer is False


@pytest.mark.slow
def test_the_refusal_says_what_to_use_instead(launched):
    _, env = launched["fp16_offload.yaml"]
    with pytest.raises(AccelerateConfigError) as info:
        launcher_overrides(env, cuda=True)
    text = str(info.value)
    assert text.startswith("config key 'accelerate config': ")
    assert ("deepspeed_config.offload_param_device 'cpu' "
            "(ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE) is not supported: ZeRO-Infinity "
            "parameter offload is not implemented; use none") in text
    assert "deepspeed_config.zero3_init_flag 'true'" in text and "use false" in text


@pytest.mark.parametrize("env, field", [
    ({"ACCELERATE_MIXED_PRECISION": "fp8"}, "mixed_precision"),  # needs TransformerEngine to launch
    ({"ACCELERATE_USE_FSDP": "true"}, "distributed_type"),
    ({"ACCELERATE_USE_MEGATRON_LM": "true"}, "distributed_type"),
    ({"ACCELERATE_USE_PARALLELISM_CONFIG": "true"}, "parallelism_config"),
    ({"ACCELERATE_CPU_AFFINITY": "1"}, "enable_cpu_affinity"),
    ({"ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES": "T5Block"},
     "deepspeed_config.deepspeed_moe_layer_cls_names"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "two"}, "deepspeed_config.zero_stage"),
    ({"ACCELERATE_DYNAMO_BACKEND": "AOT_EAGER"}, "dynamo_config.dynamo_backend"),
])
def test_settings_without_a_config_file_here_are_refused_by_name(env, field):
    with pytest.raises(AccelerateConfigError) as info:
        launcher_overrides(env, cuda=False)
    assert info.value.fields == [field]


def test_a_deepspeed_config_file_becomes_dist_deepspeed_config():
    assert launcher_overrides({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json",
                               "ACCELERATE_CONFIG_DS_FIELDS": "deepspeed_config_file"}) \
        == {"dist.deepspeed_config": "ds.json"}


def test_a_distributed_type_exported_as_a_flag_is_named_by_its_type():
    # ACCELERATE_USE_FSDP=true read "distributed_type 'true' (ACCELERATE_USE_FSDP) is not
    # supported".
    with pytest.raises(AccelerateConfigError) as info:
        launcher_overrides({"ACCELERATE_USE_FSDP": "true"}, cuda=False)
    assert "distributed_type 'FSDP' (ACCELERATE_USE_FSDP) is not supported: seq2seq-es shards " \
        "with DeepSpeed ZeRO" in str(info.value)


def test_a_command_line_key_replacing_accelerates_value_is_noted(monkeypatch, capsys):
    # The command line wins over accelerate's config file; a user who gave both is told which
    # one the run took (zero2.yaml with --dist.zero_stage 3 trained at stage 3 without a word).
    from seq2seq_es.engine.entry import build_config

    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    monkeypatch.delenv("RANK", raising=False)
    cfg = build_config(["--task", "mlsum", "--model", "barto-tiny", "--dist.zero_stage", "3"])
    assert cfg.dist.zero_stage == 3
    assert ("note: dist.zero_stage 3 from the command line replaces the 2 of accelerate's config "
            "file") in capsys.readouterr().err
    cfg = build_config(["--task", "mlsum", "--model", "barto-tiny", "--dist.zero_stage", "2"])
    assert cfg.dist.zero_stage == 2 and "note: dist.zero_stage" not in capsys.readouterr().err


def test_accelerates_value_replacing_a_run_file_or_the_pairs_default_is_noted(monkeypatch,
                                                                               capsys, tmp_path):
    # accelerate's config file sits above --config and the pair's defaults: a run file's
    # zero_stage 2 trained at zero3.yaml's 3, and the `gradient_accumulation_steps: 1` that
    # `accelerate config` writes dropped the translation tasks' accumulation of 4 (the paper's
    # step), both without a word.
    from seq2seq_es.engine.entry import build_config

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    run_file = tmp_path / "run.yaml"
    run_file.write_text("dist:\n  zero_stage: 2\n")
    cfg = build_config(["--task", "mlsum", "--model", "barto-tiny", "--config", str(run_file)])
    assert cfg.dist.zero_stage == 3
    assert capsys.readouterr().err == (
        f"note: dist.zero_stage 3 from accelerate's config file replaces the 2 of {run_file} "
        "(--dist.zero_stage VALUE on the command line wins over both)\n")
    # over the dataclass default it is what the file is for: nothing said
    build_config(["--task", "mlsum", "--model", "barto-tiny"])
    assert "note:" not in capsys.readouterr().err
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    cfg = build_config(["--task", "fapesp-es-pt", "--model", "barto-tiny"])
    assert cfg.train.grad_accum == 1
    assert ("note: train.grad_accum 1 from accelerate's config file replaces the 4 of the "
            "defaults of task fapesp-es-pt") in capsys.readouterr().err
