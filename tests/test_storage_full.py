"""A run whose disk fills up: one line saying where, why and what is kept; no partial folder.

The runs write into a small tmpfs mounted for the test (root only; CI runs as root), so that the
checkpoint or the export really meets a full disk, as on a cluster's scratch space or quota.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from safetensors import SafetensorError

from engine_runs import base_args, demo_files, run
from seq2seq_es.engine import storage


def test_write_failures_are_told_from_other_errors():
    # torch.save's zip writer on a full tmpfs (the checkpoint test below meets it for real)
    torch_full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                              "2406080 vs 2405972")
    assert storage.is_write_failure(torch_full)
    no_room = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/metrics.jsonl")
    assert storage.is_write_failure(no_room)
    safetensors_full = SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)")
    assert storage.is_write_failure(safetensors_full)
    assert storage.reason(safetensors_full, "/tmp").startswith("No space left on device (")
    # other errors keep their traceback
    assert not storage.is_write_failure(RuntimeError("CUDA error: an illegal memory access"))
    assert not storage.is_write_failure(SafetensorError("invalid header"))
    assert not storage.is_write_failure(ValueError("unexpected pos"))


def test_the_reason_names_the_errno_or_the_free_space(tmp_path):
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert storage.reason(quota, tmp_path).startswith(f"{os.strerror(errno.EDQUOT)} (")
    assert "MB free when it failed" in storage.reason(quota, tmp_path)
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "f"))
    assert storage.reason(denied, tmp_path) == f"{os.strerror(errno.EACCES)}: {tmp_path / 'f'}"
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7 vs 5")
    free = storage.free_bytes(tmp_path)
    assert storage.reason(torch_error, tmp_path, needed=free + 2**20).startswith(
        "the disk is full (")
    # with room to spare, the write failed for another reason (a quota): said with the text
    assert "unexpected pos 7 vs 5" in storage.reason(torch_error, tmp_path, needed=1)
    # a folder not yet made: the space of the nearest existing parent
    assert storage.free_bytes(tmp_path / "not" / "yet") == storage.free_bytes(tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """A mount point for a tmpfs of a given size (MB), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounts: list[Path] = []

    def mount(megabytes: int, read_only: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        options = f"size={megabytes}M" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                       check=True, capture_output=True, text=True)
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("full") / "data", train_size=24)


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_ends_the_run_with_one_line(small_disk, files):
    # 7 MB: barto-tiny's first checkpoint (~4.7 MB) fits, the second one does not.
    out = small_disk(7) / "run"
    result = run("none", 1, base_args(files, out, steps=6, extra=[
        "--train.save_every", "2", "--train.keep_last", "2"]), check=False)
    assert result.returncode == 2
    line = _error_line(result)
    assert line.startswith(f"error: checkpoint step_00000004 could not be written in "
                           f"{out / 'checkpoints'}: the disk is full ("), line
    assert ("train.keep_last + 1 = 3 checkpoints" in line
            and "the newest complete checkpoint, step_00000002, is kept, and --train.resume "
                "auto continues from it" in line), line
    # the partial folder is gone (its space is free again); the complete one is whole
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]
    assert (out / "checkpoints" / "step_00000002" / "trainer_state.json").is_file()


@pytest.mark.slow
def test_an_export_that_does_not_fit_is_removed_and_a_resume_exports(small_disk, files):
    # 6 MB, one checkpoint kept: the last step's checkpoint fits, final/ (~1.7 MB more) not.
    out = small_disk(6) / "run"
    args = base_args(files, out, steps=4, extra=["--train.save_every", "0",
                                                 "--train.keep_last", "1"])
    result = run("none", 1, args, check=False)
    assert result.returncode == 2
    line = _error_line(result)
    assert line.startswith(f"error: final/ could not be written in {out}: No space left on "
                           "device ("), line
    assert line.endswith("checkpoint step 4 is kept, and --train.resume auto exports it "
                         "without training again"), line
    assert not (out / "final").exists() and not (out / "DONE").exists()
    # Room made (TensorBoard's events go), the resume trains no step and exports.
    for event_file in (out / "tensorboard").rglob("*"):
        if event_file.is_file():
            event_file.unlink()
    resumed = run("none", 1, args + ["--train.resume", "auto", "--train.export_dtype", "bf16"],
                  check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step 1/" not in resumed.stdout
    assert (out / "final" / "model.safetensors").is_file()
    assert json.loads((out / "DONE").read_text())["step"] == 4


def test_a_run_folder_on_a_full_disk_is_named_in_one_line(small_disk, files):
    disk = small_disk(1)
    _fill(disk)
    out = disk / "run"
    result = run("none", 1, base_args(files, out, steps=2), check=False)
    assert result.returncode == 2
    line = _error_line(result)
    assert line.startswith(f"error: {out}") and ("could not be written: No space left on device "
                                                  "(0.0 MB free when it failed); no checkpoint of "
                                                  "this run was written") in line, line


def _fill(disk: Path) -> None:
    with (disk / "filler").open("wb") as filler:  # every byte taken
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


@pytest.mark.parametrize("cache", ["read-only", "full"])
def test_a_tokenization_cache_that_cannot_be_written_is_data_cache_dirs_fault(
        small_disk, cache):
    # A compute node's read-only or full home: the tokenized split's cache is named by its key,
    # not raised as pyarrow's or pathlib's traceback in the middle of the run's start.
    import datasets

    from seq2seq_es.data.tokenize import tokenize_examples
    from seq2seq_es.errors import ConfigError
    from seq2seq_es.models.sources import load_tokenizer
    from seq2seq_es.models.tiny import ensure_tiny_checkpoint

    tokenizer = load_tokenizer(str(ensure_tiny_checkpoint("barto-tiny")))
    disk = small_disk(1, read_only=cache == "read-only")
    if cache == "full":
        _fill(disk)
    examples = datasets.Dataset.from_dict({"source": ["uno dos tres"] * 50,
                                           "target": ["uno"] * 50})
    with pytest.raises(ConfigError) as refused:
        tokenize_examples(examples, tokenizer, split="train", max_source_length=16,
                          max_target_length=8, cache_dir=str(disk / "cache"))
    message = str(refused.value)
    assert message.startswith("config key 'data.cache_dir': could not be used while tokenizing "
                              "train: "), message
    assert message.endswith("point data.cache_dir to a writable folder with free space")


def test_tiny_models_in_a_read_only_cache_name_seq2seq_es_cache(small_disk, monkeypatch):
    from seq2seq_es.errors import Seq2SeqEsError
    from seq2seq_es.models.tiny import ensure_tiny_checkpoint

    monkeypatch.setenv("SEQ2SEQ_ES_CACHE", str(small_disk(1, read_only=True) / "cache"))
    with pytest.raises(Seq2SeqEsError, match=r"the -tiny models are built in .*/cache/tiny, which "
                                              r"could not be written \(Read-only file system\); "
                                              r"set SEQ2SEQ_ES_CACHE to a writable folder"):
        ensure_tiny_checkpoint("barto-tiny")


@pytest.fixture(scope="module")
def trained_run(files, tmp_path_factory):
    """A finished tiny run (final/ and a checkpoint) for the commands that read one."""
    out = tmp_path_factory.mktemp("trained") / "run"
    run("none", 1, base_args(files, out, steps=2, extra=["--train.eval_at_end", "true"]))
    (out.parent / "articles.txt").write_text("El gobierno anunció hoy un plan.\nLlueve.\n")
    return out


def _command(*argv: str) -> subprocess.CompletedProcess:
    import sys

    from engine_runs import REPO, subprocess_env
    return subprocess.run([sys.executable, "-m", "seq2seq_es", *argv], cwd=REPO,
                          env=subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_commands_writing_to_a_full_disk_say_so_in_one_line(small_disk, trained_run):
    disk = small_disk(1)
    _fill(disk)
    evaluated = _command("evaluate", str(trained_run), "--output-dir", str(disk / "scores"))
    assert evaluated.returncode == 2
    assert _error_line(evaluated).startswith(
        f"error: the predictions and scores could not be written in {disk / 'scores'}: No space "
        "left on device ("), evaluated.stderr[-2000:]
    exported = _command("export", str(trained_run), str(disk / "model"))
    assert exported.returncode == 2
    assert _error_line(exported).startswith(
        f"error: the model folder could not be written in {disk / 'model'}: No space left on "
        "device (")
    assert _error_line(exported).endswith("; the partial output was removed")
    assert not (disk / "model").exists()
    predicted = _command("predict", str(trained_run / "final"), "--input", str(trained_run.parent
                         / "articles.txt"), "--output", str(disk / "out" / "summaries.txt"))
    assert predicted.returncode == 2
    assert _error_line(predicted).startswith(
        f"error: the predictions could not be written in {disk / 'out' / 'summaries.txt'}: No "
        "space left on device ("), predicted.stderr[-2000:]
    collected = _command("collect", str(trained_run), "--markdown", str(disk / "results.md"))
    assert collected.returncode == 2, collected.stderr[-2000:]
    assert _error_line(collected).startswith("error: could not write the results ([Errno 28] No "
                                             "space left on device); nothing was replaced: ")
    # convert-led names its OUT folder and removes what it half wrote
    converted = _command("convert-led", str(trained_run / "final"), str(disk / "led"),
                         "--max-positions", "256", "--attention-window", "16")
    assert converted.returncode == 2, converted.stderr[-2000:]
    assert _error_line(converted) == (f"error: argument OUT: could not write {disk / 'led'}: No "
                                      "space left on device; the partial folder was removed")
    assert not (disk / "led").exists()
