"""Single-node launch paths as a user of the Hugging Face Trainer / accelerate / torchrun world
tries them: what each launcher really starts, and what the run says when that is not what the
user asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine_runs import REPO, subprocess_env

ACCELERATE = str(Path(sys.executable).parent / "accelerate")

DUMP = """import json, os, sys
with open(sys.argv[1] + "." + os.environ.get("RANK", "norank"), "w") as f:
    json.dump(dict(os.environ), f)
"""

MULTI_CPU = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_CPU
mixed_precision: 'no'
num_machines: 1
num_processes: 2
machine_rank: 0
use_cpu: true
"""


def _accelerate_env(tmp_path: Path, *launch_args: str) -> list[dict[str, str]]:
    """The environment of every process `accelerate launch *launch_args` starts."""
    script = tmp_path / "dump.py"
    script.write_text(DUMP)
    (tmp_path / "multi_cpu.yaml").write_text(MULTI_CPU)
    env = {k: v for k, v in subprocess_env().items()
           if not k.startswith("ACCELERATE_") and k not in ("MASTER_ADDR", "MASTER_PORT")}
    stem = tmp_path / f"env{len(list(tmp_path.glob('env*')))}"
    proc = subprocess.run([ACCELERATE, "launch", *launch_args, str(script), str(stem)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(path.read_text()) for path in sorted(tmp_path.glob(stem.name + ".*"))]


@pytest.mark.parametrize("launch_args", [["--config_file", "multi_cpu.yaml"],
                                         ["--num_processes", "2"]])
def test_accelerate_starting_one_process_of_two_is_said(tmp_path, capsys, launch_args):
    # accelerate's simple launcher (MULTI_CPU, or no config file without GPUs) starts one process
    # and expects mpirun to start the others; the run trained on 1 rank where 2 were asked for,
    # saying nothing but "x 1 rank(s)" in its batch line.
    from seq2seq_es.engine import distributed as D

    envs = _accelerate_env(tmp_path, *launch_args)
    assert len(envs) == 1 and "RANK" not in envs[0]  # what accelerate really does
    D._said.clear()
    got = D.read_env(envs[0])
    assert (got.rank, got.world_size, got.launcher) == (0, 1, "none")
    err = capsys.readouterr().err
    assert "accelerate launch was asked for more than one process" in err, err
    assert "trains alone" in err and "--multi_gpu --num_processes N" in err


def test_accelerate_asked_for_one_process_says_nothing(tmp_path, capsys):
    from seq2seq_es.engine import distributed as D

    envs = _accelerate_env(tmp_path, "--num_processes", "1")
    D._said.clear()
    assert D.read_env(envs[0]).world_size == 1
    assert "accelerate" not in capsys.readouterr().err


@pytest.mark.slow  # accelerate's torchrun launcher starts two processes
def test_accelerate_multi_gpu_flag_starts_two_ranks_on_cpus(tmp_path, capsys):
    # What the warning above recommends works on a machine without GPUs.
    from seq2seq_es.engine import distributed as D

    envs = _accelerate_env(tmp_path, "--multi_gpu", "--num_processes", "2")
    assert sorted(D.read_env(env).rank for env in envs) == [0, 1]
    assert {D.read_env(env).world_size for env in envs} == {2}
    assert "accelerate launch was asked" not in capsys.readouterr().err


def test_a_rendezvous_port_in_use_is_one_line_naming_the_launcher_options(tmp_path):
    # `deepspeed` and accelerate's one-process launcher default MASTER_PORT to 29500 (as torchrun
    # does): a second run on the machine met the first one's port and every rank printed
    # torch's 30-line TCPStore traceback ("EADDRINUSE"), which named no option to change.
    import socket

    from engine_runs import ENTRY, base_args, demo_files

    files = demo_files(tmp_path / "data", train_size=8)
    with socket.create_server(("0.0.0.0", 0)) as held:  # another run's rendezvous
        port = held.getsockname()[1]
        env = subprocess_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                             MASTER_PORT=str(port), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        proc = subprocess.run([sys.executable, ENTRY, *base_args(files, tmp_path / "run",
                                                                  steps=2)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"port {port}" in error[0], proc.stderr[-3000:]
    assert "deepspeed --master_port" in error[0] and "--main_process_port" in error[0]


def test_a_master_addr_that_does_not_resolve_is_one_line_not_a_half_hour_wait(tmp_path):
    # `deepspeed --master_addr nodo-typo` (or an exported MASTER_ADDR of another cluster): torch's
    # TCPStore retried the name on every rank, rank 0 included, with a warning every few
    # seconds, until dist.timeout_min (30 min) ran out.
    import time

    from engine_runs import ENTRY, base_args, demo_files

    files = demo_files(tmp_path / "data", train_size=8)
    env = subprocess_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0",
                         MASTER_ADDR="no-such-node.invalid", MASTER_PORT="29999",
                         OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, ENTRY, *base_args(files, tmp_path / "run", steps=2),
                           "--dist.timeout_min", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert time.monotonic() - started < 100  # not the 2-minute rendezvous timeout
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "'no-such-node.invalid'" in error[0], proc.stderr[-3000:]
    assert "--master_addr" in error[0] and "Traceback" not in proc.stderr


@pytest.mark.slow  # torchrun starts two ranks
def test_torchrun_summary_shows_the_error_line_not_to_enable_traceback(tmp_path):
    # torchrun ends a failed run with a summary (the end of a cluster log, read first) whose
    # `traceback :` field read "To enable traceback see: https://pytorch.org/..." for a rank
    # that ended with our `error:` line: the line itself sat above, once per rank, between the
    # launcher's warnings. torchrun reads that field from the file TORCHELASTIC_ERROR_FILE names.
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = subprocess_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "seq2seq_es",
                           "train", "--task", "mlsum", "--model", "barto-tiny",
                           "--train.output_dir", str(tmp_path / "run"), "--optim.lr", "-1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    summary = proc.stderr[proc.stderr.index("Root Cause"):]
    assert "traceback : error: config key 'optim.lr': must be positive" in summary, summary
    assert "To enable traceback" not in summary
    # said once, by the node's first process, not once per rank (an audit's complaint); the
    # summary's failures still give every rank's
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert said == ["error: config key 'optim.lr': must be positive"], proc.stderr[-3000:]


@pytest.mark.parametrize("launcher_env, says", [
    ({}, True), ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, False),
    ({"RANK": "4", "WORLD_SIZE": "8", "LOCAL_RANK": "0"}, True),  # another node's first
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, False),
    ({"SLURM_PROCID": "5", "SLURM_LOCALID": "1"}, False),
    ({"SLURM_PROCID": "2", "SLURM_LOCALID": "0"}, True),
], ids=["alone", "torchrun-1", "node2-first", "mpirun-local-1", "srun-local-1", "srun-node2"])
def test_an_error_before_the_process_group_is_said_by_each_nodes_first_process(
        monkeypatch, tmp_path, launcher_env, says):
    # Every process of a node meets a config mistake alike; each printed it (eight lines on a
    # node of eight GPUs). The node's first says it; every rank still tells torchrun's file.
    from seq2seq_es import process_exit
    from seq2seq_es.errors import ConfigError, run_command

    # before any process group (an earlier test of this worker may have started one)
    monkeypatch.setattr(process_exit, "_process_group_started", False)
    monkeypatch.setattr("seq2seq_es.errors.NODE_FIRST_GRACE_S", 0.0)

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK",
                 "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "SLURM_PROCID", "SLURM_LOCALID",
                 "SEQ2SEQ_ES_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in launcher_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)

    def command(argv):
        raise ConfigError("optim.lr", "must be positive")

    assert run_command(command, []) == 2
    assert stderr.calls == (["error: config key 'optim.lr': must be positive\n"] if says else [])
    assert "config key 'optim.lr'" in (tmp_path / "error.json").read_text()
    # once the process group has started, an error is this rank's own: every rank says its own
    monkeypatch.setattr(process_exit, "_process_group_started", True)
    stderr.calls.clear()
    assert run_command(command, []) == 2
    assert stderr.calls == ["error: config key 'optim.lr': must be positive\n"]


def test_a_crash_leaves_its_traceback_for_torchrun(tmp_path):
    # Not only our refusals: an exception nobody caught (a bug, a library's failure) is put in
    # torchrun's error file with its traceback, as torch's @record would.
    error_file = tmp_path / "error.json"
    crash = ("import sys; from seq2seq_es import cli\n"
             "def main(argv):\n    raise RuntimeError('boom in main')\n"
             "cli.main = main\ncli.console([])\n")
    script = tmp_path / "crash.py"
    script.write_text(crash)
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env=subprocess_env(TORCHELASTIC_ERROR_FILE=str(error_file)))
    assert proc.returncode == 1 and "RuntimeError: boom in main" in proc.stderr
    record = json.loads(error_file.read_text())["message"]
    assert record["message"] == "RuntimeError: boom in main"
    assert "Traceback" in record["extraInfo"]["py_callstack"]
    assert "raise RuntimeError('boom in main')" in record["extraInfo"]["py_callstack"]
    assert int(record["extraInfo"]["timestamp"]) > 0


def _python_with_error_file(code: str, error_file: Path) -> subprocess.CompletedProcess:
    """`python -c code` as a torchrun rank would run, told to leave its error in error_file."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=subprocess_env(TORCHELASTIC_ERROR_FILE=str(error_file)))


def test_an_error_file_that_cannot_be_written_whole_is_not_left_half_written(tmp_path):
    # On a full disk (the error being told) an emptied error.json made torchrun's agent fail on
    # json.load and end in a JSONDecodeError traceback instead of its summary. A file size
    # limit of 0 stands in for the full disk.
    error_file = tmp_path / "error.json"
    child = ("import resource, signal, sys\n"
             "from seq2seq_es.errors import tell_launcher\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
             "tell_launcher('error: the disk is full')\n")
    proc = _python_with_error_file(child, error_file)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []  # neither an empty error.json nor a partial file


class _Writes:
    """A stderr that keeps each write() call apart, as the pipe a launcher reads would."""

    def __init__(self):
        self.calls: list[str] = []

    def write(self, text):
        self.calls.append(text)
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("failure", ["refusal", "full disk"])
def test_an_error_line_goes_out_in_one_write_with_its_newline(monkeypatch, failure):
    # Two torchrun ranks refusing together on one pipe printed `error: A error: A` on one line
    # and two bare newlines after it (clean-clone CI): print() writes the text and its newline
    # apart, and the other rank's line fell between them.
    import errno

    from seq2seq_es.errors import ConfigError, run_command

    def command(argv):
        if failure == "refusal":
            raise ConfigError("optim.lr", "must be positive")
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/ckpt")

    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.delenv("SEQ2SEQ_ES_DEBUG", raising=False)
    assert run_command(command, []) == 2
    assert len(stderr.calls) == 1 and stderr.calls[0].startswith("error: "), stderr.calls
    assert stderr.calls[0].endswith("\n") and stderr.calls[0].count("\n") == 1


def test_a_process_without_stderr_still_ends_with_status_2(tmp_path):
    # Started with stderr closed (a daemon, pythonw): sys.stderr is None; the refusal is not
    # said but the status and torchrun's error file still are, as with print() before.
    error_file = tmp_path / "error.json"
    child = ("import sys; sys.stderr = None\n"
             "from seq2seq_es.errors import ConfigError, run_command\n"
             "def command(argv):\n    raise ConfigError('optim.lr', 'must be positive')\n"
             "sys.exit(run_command(command, []))\n")
    proc = _python_with_error_file(child, error_file)
    assert proc.returncode == 2, proc.stderr
    record = json.loads(error_file.read_text())["message"]
    assert record["message"] == "error: config key 'optim.lr': must be positive"


@pytest.mark.parametrize("raised, says", [
    ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
     "[127.0.0.1]:39592. This is typically caused by a remote worker crashing.",
     "lost contact with another rank (Connection closed by peer [127.0.0.1]:39592."),
    ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.0.0.2]:58557: "
     "Connection reset by peer.", "lost contact"),
    # gloo's advice runs on: cut at a word, and said to be cut ("Check the logs of the re)")
    ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:54913: "
     "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in "
     "the application. Check the logs of the remote worker for the actual error.",
     "in the application. Check the logs of ...); that rank ended first"),
    ("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network "
     "error, NCCL version 2.21.5", "lost contact"),
    ("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
     "60000ms for recv operation to complete",
     "did not answer within dist.timeout_min (Timed out waiting 60000ms"),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", None),
    ("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x2)", None),
    # a tracker's socket, not another rank: its own error, said with its traceback
    ("('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))", None),
    ("HTTPSConnectionPool(host='api.wandb.ai'): Read timed out waiting for recv", None),
    # gloo timing out while it connects is no rank that stopped answering in a collective
    ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:1021] Timed out waiting 30000ms "
     "for connect", None),
    # one long unbroken word is cut where it is, not dropped whole for the placeholder
    ("[/a/gloo/pair.cc:12] Connection closed by peer [10.0.0.1]:" + "x" * 200,
     "lost contact with another rank (Connection closed by peer [10.0.0.1]:xxx"),
])
def test_a_collective_that_lost_another_rank_is_one_line(raised, says):
    from seq2seq_es.errors import lost_contact, waited_too_long

    error = RuntimeError(raised)
    line = lost_contact(error) or waited_too_long(error)
    if says is None:
        assert line is None
    else:
        assert line.startswith("error: ") and says in line and "\n" not in line


def test_torch_distributeds_own_errors_are_known_by_their_type():
    import torch.distributed

    from seq2seq_es.errors import lost_contact

    assert lost_contact(torch.distributed.DistNetworkError("Connection reset by peer"))
    assert lost_contact(RuntimeError("Connection reset by peer")) is None


def test_a_rank_that_lost_contact_stamps_its_line_after_the_cause(tmp_path):
    # The whole path of a surviving rank (cli.console): one line, said and put in torchrun's
    # file a second late, so that the failing rank's error, stamped in the same second, is
    # named the root cause and not this one's.
    import json
    import time

    child = ("import os, time, torch.distributed\n"
             "os.environ['WORLD_SIZE'] = '2'\n"
             "from seq2seq_es import cli, process_exit\n"
             "process_exit.started_process_group()\n"
             "def lost(argv):\n"
             "    raise torch.distributed.DistNetworkError('Connection closed by peer')\n"
             "cli.main = lost\n"
             "print(time.time(), flush=True)\n"
             "cli.console([])\n")
    proc = _python_with_error_file(child, tmp_path / "error.json")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: lost contact with another rank ("), proc.stderr
    said_at = int(float(proc.stdout.split()[0]))
    record = json.loads((tmp_path / "error.json").read_text())["message"]
    assert int(record["extraInfo"]["timestamp"]) - said_at in (1, 2, 3)
    assert time.time() >= said_at


def test_a_consequence_of_another_ranks_failure_is_stamped_after_it(tmp_path, monkeypatch):
    # torchrun names the earliest stamp the root cause (whole seconds, the lowest rank on a tie)
    import json

    from seq2seq_es.errors import tell_launcher

    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    stamps = []
    for after_others in (False, True):
        tell_launcher("error: x", after_others=after_others)
        record = json.loads((tmp_path / "error.json").read_text())
        stamps.append(int(record["message"]["extraInfo"]["timestamp"]))
    assert stamps[1] - stamps[0] in (1, 2)
