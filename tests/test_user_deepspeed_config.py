"""dist.deepspeed_config: a user's DeepSpeed file may tune DeepSpeed, not retrain something else.

A file used to be merged over the generated config whatever it held: its optimizer and scheduler
blocks were ignored (the package passes its own AdamW and schedule) though the run's saved
deepspeed_config.json listed them, and its ZeRO stage, clipping and precision ran while
config.yaml said otherwise (and train.on_nan skip trained under a ZeRO-3 given by the file).
"""

import json

import pytest

from seq2seq_es.config import RunConfig
from seq2seq_es.engine.optim import deepspeed_config
from seq2seq_es.errors import ConfigError


def make_cfg(file=None, **values) -> RunConfig:
    """RunConfig() with dotted `values` ("dist.zero_stage": 2) and the user file, if any."""
    cfg = RunConfig()
    for key, value in values.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    cfg.dist.deepspeed_config = str(file) if file else None
    return cfg


def write(tmp_path, values: dict):
    file = tmp_path / "ds.json"
    file.write_text(json.dumps(values))
    return file


def refusal(cfg: RunConfig) -> str:
    with pytest.raises(ConfigError) as caught:
        deepspeed_config(cfg, world_size=1)
    assert caught.value.key == "dist.deepspeed_config"
    return str(caught.value)


def leaves(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("block", ["optimizer", "scheduler"])
def test_an_optimizer_or_scheduler_block_is_refused(tmp_path, block):
    # What the user walkthrough's file held (a Hugging Face style file, "auto" values included):
    # one error, the block's, not the "auto" inside it or the batch key beside it.
    file = write(tmp_path, {
        "optimizer": {"type": "AdamW", "params": {"lr": 0.001, "weight_decay": 0.1,
                                                  "betas": "auto"}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
        "train_batch_size": "auto"} if block == "optimizer" else
        {"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}})
    message = refusal(make_cfg(file))
    assert message == (
        f"config key 'dist.deepspeed_config': {file} sets '{block}', which DeepSpeed would "
        "ignore: seq2seq-es trains with its own AdamW and learning-rate schedule, set by the optim "
        "section (optim.lr, optim.weight_decay, optim.betas, optim.eps, optim.schedule, "
        f"optim.warmup_steps, optim.warmup_ratio); set those and remove the '{block}' block from "
        "the file")


@pytest.mark.parametrize("values, file_values, json_key, config_key", [
    ({}, {"zero_optimization": {"stage": 1}}, "zero_optimization.stage", "dist.zero_stage"),
    # The walkthrough's bypass: ZeRO-3 from the file under train.on_nan skip, which
    # --dist.zero_stage 3 refuses; the file may not change the stage now.
    ({"train.on_nan": "skip"}, {"zero_optimization": {"stage": 3}}, "zero_optimization.stage",
     "dist.zero_stage"),
    ({}, {"zero_optimization": True}, "zero_optimization", "dist.zero_stage"),
    ({}, {"gradient_clipping": 0.3}, "gradient_clipping", "optim.max_grad_norm"),
    ({"train.precision": "bf16"}, {"bf16": {"enabled": True}}, "bf16.enabled",
     "train.precision"),  # ZeRO 0 runs bf16 as torch autocast over fp32 weights
    ({"train.precision": "bf16", "dist.zero_stage": 2}, {"bf16": {"enabled": False}},
     "bf16.enabled", "train.precision"),
    ({"train.precision": "bf16", "dist.zero_stage": 2}, {"bfloat16": {"enabled": False}},
     "bfloat16.enabled", "train.precision"),  # DeepSpeed reads "bf16" and ignores this one
    ({"train.precision": "fp32", "dist.zero_stage": 1}, {"fp16": {"enabled": True}},
     "fp16.enabled", "train.precision"),
    ({"train.precision": "fp32"}, {"torch_autocast": {"enabled": True}},
     "torch_autocast.enabled", "train.precision"),
    ({"train.precision": "bf16"}, {"torch_autocast": {"dtype": "float16"}},
     "torch_autocast.dtype", "train.precision"),
    ({"train.precision": "bf16", "dist.zero_stage": 1},
     {"data_types": {"grad_accum_dtype": "bf16"}}, "data_types.grad_accum_dtype",
     "dist.grad_accum_dtype"),
    ({"dist.zero_stage": 2}, {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}},
     "zero_optimization.offload_optimizer.device", "dist.offload_optimizer"),
    ({"dist.zero_stage": 2, "dist.offload_optimizer": True},
     {"zero_optimization": {"offload_optimizer": {"device": "nvme"}}},
     "zero_optimization.offload_optimizer.device", "dist.offload_optimizer"),
    ({"dist.zero_stage": 2, "dist.offload_optimizer": True},
     {"zero_optimization": {"offload_optimizer": None}}, "zero_optimization.offload_optimizer",
     "dist.offload_optimizer"),
])
def test_a_derived_key_that_differs_is_refused_naming_the_config_key(
        tmp_path, values, file_values, json_key, config_key):
    file = write(tmp_path, file_values)
    message = refusal(make_cfg(file, **values))
    assert message.startswith(f"config key 'dist.deepspeed_config': {file} sets '{json_key}' to ")
    assert f"set {config_key} instead and remove '{json_key}' from the file" in message
    assert f"follow {config_key}, not the file" in message


def test_the_walkthrough_message_says_what_the_run_uses(tmp_path):
    file = write(tmp_path, {"zero_optimization": {"stage": 1}})
    assert refusal(make_cfg(file)) == (
        f"config key 'dist.deepspeed_config': {file} sets 'zero_optimization.stage' to 1, but "
        "seq2seq-es writes 'zero_optimization.stage' from dist.zero_stage: 0 for this run; set "
        "dist.zero_stage instead and remove 'zero_optimization.stage' from the file (config.yaml "
        "and the run's checks follow dist.zero_stage, not the file)")
    file = write(tmp_path, {"gradient_clipping": 0.3})
    assert refusal(make_cfg(file)) == (
        f"config key 'dist.deepspeed_config': {file} sets 'gradient_clipping' to 0.3, but "
        "seq2seq-es writes 'gradient_clipping' from optim.max_grad_norm: 1.0 for this run; set "
        "optim.max_grad_norm instead and remove 'gradient_clipping' from the file (config.yaml "
        "and the run's checks follow optim.max_grad_norm, not the file)")


def test_auto_in_a_derived_key_says_to_remove_it(tmp_path):
    file = write(tmp_path, {"gradient_clipping": "auto"})
    assert refusal(make_cfg(file)) == (
        f"config key 'dist.deepspeed_config': {file}: 'gradient_clipping' is \"auto\"; remove it: "
        "seq2seq-es writes it from optim.max_grad_norm")


@pytest.mark.parametrize("values, file_values", [
    ({"dist.zero_stage": 3}, {"zero_optimization": {"stage": 3}}),
    ({"optim.max_grad_norm": 0.3}, {"gradient_clipping": 0.3}),
    ({}, {"gradient_clipping": 1}),  # 1 is 1.0
    ({"train.precision": "bf16", "dist.zero_stage": 1},
     {"bf16": {"enabled": True}, "fp16": {"enabled": False}, "bfloat16": {"enabled": True},
      "data_types": {"grad_accum_dtype": "float32"}}),
    ({"train.precision": "bf16"}, {"torch_autocast": {"enabled": True, "dtype": "bf16"},
                                   "bf16": {"enabled": False}}),
    ({"dist.zero_stage": 2, "dist.offload_optimizer": True},
     {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu",
                                                              "pin_memory": False}}}),
    ({"dist.zero_stage": 2}, {"zero_optimization": {"offload_optimizer": {"device": "none"}}}),
])
def test_a_derived_key_restated_with_the_generated_value_is_accepted(tmp_path, values,
                                                                      file_values):
    file = write(tmp_path, file_values)
    with_file = deepspeed_config(make_cfg(file, **values), world_size=1)
    without = deepspeed_config(make_cfg(None, **values), world_size=1)
    differing = {key for key in leaves(with_file).keys() | leaves(without).keys()
                 if leaves(with_file).get(key) != leaves(without).get(key)}
    # Only what the file adds (the ignored "bfloat16" section, an offload tuning key).
    assert differing <= set(leaves(file_values)), differing


TUNING = {
    "zero_optimization": {"reduce_bucket_size": 1000, "allgather_bucket_size": 2000,
                          "overlap_comm": True, "contiguous_gradients": False,
                          "stage3_max_live_parameters": 1_000_000,
                          "stage3_prefetch_bucket_size": 3000},
    "activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": False},
    "comms_logger": {"enabled": True, "verbose": False},
    "steps_per_print": 50,
    "wall_clock_breakdown": True,
    "fp16": {"initial_scale_power": 12, "loss_scale_window": 500},
}


@pytest.mark.parametrize("values", [
    {},
    {"dist.zero_stage": 1, "train.precision": "bf16"},
    {"dist.zero_stage": 2, "dist.offload_optimizer": True, "train.precision": "fp16"},
    {"dist.zero_stage": 3, "train.precision": "fp16", "optim.max_grad_norm": 0.5},
])
def test_a_file_of_tuning_keys_changes_only_those_keys(tmp_path, values):
    file = write(tmp_path, TUNING)
    with_file = leaves(deepspeed_config(make_cfg(file, **values), world_size=1))
    without = leaves(deepspeed_config(make_cfg(None, **values), world_size=1))
    tuned = leaves(TUNING)
    for key in with_file.keys() | without.keys():
        if key in tuned:
            assert with_file[key] == tuned[key], key
        else:
            assert with_file.get(key) == without.get(key), key


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_a_generated_config_given_back_is_refused_once_with_what_to_do(tmp_path, stage):
    # configs/deepspeed/zeroN.json sits beside the accelerate files; given as the DeepSpeed
    # file it was refused for its batch keys, then (once they were removed) its stage or
    # precision, one key at a time.
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "configs" / "deepspeed" / f"zero{stage}.json"
    said = refusal(make_cfg(shipped, **{"dist.zero_stage": stage}))
    assert f"{shipped} is a whole DeepSpeed config as this package generates it" in said
    assert "give dist.deepspeed_config a file of tuning keys only" in said
    # the tuning example it gives is one the merge takes
    example = json.loads(said[said.index("{"):])
    deepspeed_config(make_cfg(write(tmp_path, example), **{"dist.zero_stage": stage}),
                     world_size=1)
