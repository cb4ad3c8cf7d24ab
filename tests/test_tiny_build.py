"""Tiny models built by several ranks at once (a torchrun test on a fresh machine)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from engine_runs import free_port, subprocess_env

# Rank 0 starts late, so rank 1 builds first. Under torch.distributed, transformers 5 writes
# nothing from rank 1's save_pretrained: before the fix its empty folder was renamed into
# place and every later load failed with "holds no usable model config".
SCRIPT = """
import os, time, torch.distributed as dist
dist.init_process_group("gloo")
if dist.get_rank() == 0:
    time.sleep(4)
from seq2seq_es.models import load_model_and_tokenizer
model, tokenizer = load_model_and_tokenizer("barto-tiny")
print("rank", dist.get_rank(), "loaded", type(model).__name__, flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow  # torchrun with two ranks building a model: about 20 s
def test_ranks_building_a_tiny_model_at_once_all_load_it(tmp_path):
    env = subprocess_env(SEQ2SEQ_ES_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
                         HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(free_port()), "--no-python", sys.executable, "-c", SCRIPT],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("loaded BartForConditionalGeneration") == 2
    built = list((tmp_path / "cache" / "tiny").iterdir())
    assert [folder.name.split("-")[0] for folder in built] == ["barto"]
    assert (built[0] / "config.json").is_file() and any(built[0].glob("*.safetensors"))


def test_a_tiny_model_is_as_readable_as_its_config(tmp_path):
    # mkdtemp made the folder 0700 and transformers wrote the weights 0600: a SEQ2SEQ_ES_CACHE
    # shared by several users held models only their builder could read (a concurrency audit).
    code = ("from seq2seq_es.models.tiny import ensure_tiny_checkpoint; "
            "print(ensure_tiny_checkpoint('barto-tiny'))")
    env = subprocess_env(SEQ2SEQ_ES_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import os
    from pathlib import Path

    folder = Path(done.stdout.strip().splitlines()[-1])
    mode = os.stat(folder / "config.json").st_mode & 0o777
    assert os.stat(folder).st_mode & 0o777 == mode | (mode & 0o444) >> 2
    weights = list(folder.glob("*.safetensors"))
    assert weights and all(os.stat(path).st_mode & 0o777 == mode for path in weights)
