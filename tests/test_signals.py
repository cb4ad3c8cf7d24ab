"""Stop signals: the first asks for a save at the next step boundary; a second Ctrl-C stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from seq2seq_es.engine.signals import (FIRST_SIGINT, FIRST_SIGINT_FINISHING, InterruptedNow,
                                       StopRequest)


@pytest.fixture
def request_installed():
    stop = StopRequest(announce=True).install()
    yield stop
    stop.restore()


def test_the_first_ctrl_c_asks_for_a_save_and_says_so_and_the_second_stops_at_once(
        request_installed, capfd):
    os.kill(os.getpid(), signal.SIGINT)
    assert request_installed.signum == signal.SIGINT
    assert FIRST_SIGINT.strip() in capfd.readouterr().err
    with pytest.raises(InterruptedNow) as stopped:
        os.kill(os.getpid(), signal.SIGINT)
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.reports
    assert "nothing saved since the last complete checkpoint" in str(stopped.value)


def test_sigterm_and_sigusr2_never_escalate_and_the_first_signal_names_the_stop(
        request_installed, capfd):
    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        os.kill(os.getpid(), sig)
    assert request_installed.signum == signal.SIGUSR2
    assert capfd.readouterr().err == FIRST_SIGINT  # the SIGINT's line only


def test_only_the_announcing_rank_speaks_and_restore_puts_the_handlers_back(capfd):
    before = signal.getsignal(signal.SIGINT)
    stop = StopRequest(announce=False).install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert capfd.readouterr().err == ""
        with pytest.raises(InterruptedNow) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
        assert not stopped.value.reports
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_while_the_run_finishes_the_first_ctrl_c_says_it_ends_when_done(request_installed, capfd):
    request_installed.finishing = True  # the last step is saved; test scoring and export run
    os.kill(os.getpid(), signal.SIGINT)
    assert capfd.readouterr().err == FIRST_SIGINT_FINISHING
    with pytest.raises(InterruptedNow):
        os.kill(os.getpid(), signal.SIGINT)


# Where the SIGINT comes: as the model starts loading, and (README walkthrough) in the first
# seconds, as the config is composed, before torch and transformers are imported.
@pytest.mark.parametrize("module, function", [("trainer", "get_model"),
                                              ("entry", "build_config")])
def test_a_ctrl_c_during_the_set_up_is_one_line_and_status_130(tmp_path, module, function):
    # Before the training steps no stop handler runs: a Ctrl-C while the model loaded printed a
    # KeyboardInterrupt traceback (one per rank under a launcher). A real SIGINT, sent by the
    # process itself.
    import subprocess
    import sys

    from engine_runs import base_args, demo_files, subprocess_env

    script = ("import os, signal, sys\n"
              f"from seq2seq_es.engine import {module}\n"
              "def interrupted(*args):\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              f"{module}.{function} = interrupted\n"
              "from seq2seq_es.cli import console\n"
              "console(['train', *sys.argv[1:]])\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", script,
                           *base_args(demo_files(tmp_path / "data"), out, steps=2)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "interrupted (Ctrl-C) outside the training steps (during the set-up, or the upload "
        "after DONE): no checkpoint was taken for it; --train.resume auto continues from the "
        "last one, if there is one")
    assert not (out / "checkpoints").exists()
