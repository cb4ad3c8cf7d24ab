"""The rendezvous port of a SLURM job's ranks (seq2seq_es.engine.rendezvous).

A sweep's job failed in CI with EADDRINUSE: its port, a hash of the job id into 20000-60000, was
held by one of the many outgoing connections the node's gloo groups had open (the kernel hands
those ports out from 32768 on). These tests hold the job's port the same way and check that the
ranks still meet."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
import torch.distributed as dist

from ports import hold_like_an_outgoing_connection, release
from seq2seq_es.engine import rendezvous
from seq2seq_es.engine.distributed import read_env


def a_job_id() -> str:
    """A job id of this test run alone: ports a previous run held may still be in TIME_WAIT."""
    return f"test-{uuid.uuid4().hex}"


def store_listens_on(port: int) -> bool:
    try:
        store = dist.TCPStore("127.0.0.1", port, 1, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=10))
    except RuntimeError:  # DistNetworkError: EADDRINUSE
        return False
    store.set("k", "v")
    del store
    return True


def test_every_port_lies_below_the_kernels_ephemeral_ports():
    # Linux's default ip_local_port_range starts at 32768; this machine's too.
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert rendezvous.RENDEZVOUS_PORTS.stop <= min(low, 32768)
    ports = {rendezvous.rendezvous_port(f"{job}:{restart}", attempt)
             for job in ("7", "873_3", "123456") for restart in range(3) for attempt in range(3)}
    assert ports <= set(rendezvous.RENDEZVOUS_PORTS) and len(ports) > 20
    # the same on every rank; a requeued run (restart 1) meets on another port
    assert rendezvous.rendezvous_port("873_3:0") == rendezvous.rendezvous_port("873_3:0")
    assert rendezvous.rendezvous_port("873_3:0") != rendezvous.rendezvous_port("873_3:1")


def test_bare_srun_ranks_meet_on_a_port_below_the_ephemeral_ones():
    env = read_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0",
                    "SLURM_JOB_ID": "987654", "MASTER_ADDR": "node1"})
    assert env.master_port == rendezvous.rendezvous_port("987654")
    assert env.master_port in rendezvous.RENDEZVOUS_PORTS


def test_a_taken_port_is_skipped_and_the_ranks_meet_on_the_next_one(tmp_path):
    job, restart = a_job_id(), 0
    first = rendezvous.rendezvous_port(f"{job}:{restart}")
    held = hold_like_an_outgoing_connection(first)
    try:
        assert not rendezvous.port_is_free(first)
        assert not store_listens_on(first)  # what failed the CI job
        ports = {}

        def rank(r):
            ports[r] = rendezvous.agree_on_master_port(tmp_path, job, restart, r, 3, wait_s=30)

        waiting = [threading.Thread(target=rank, args=(r,)) for r in (1, 2)]
        for thread in waiting:  # the other ranks start first and wait for rank 0's file
            thread.start()
        rank(0)
        for thread in waiting:
            thread.join()
        assert ports[0] == ports[1] == ports[2] == rendezvous.rendezvous_port(f"{job}:0", 1)
        assert store_listens_on(ports[0])
    finally:
        release(held)


def test_a_requeued_run_publishes_its_own_port_and_drops_the_last_runs(tmp_path):
    job = "55"
    first = rendezvous.agree_on_master_port(tmp_path, job, 0, 0, 2)
    assert (tmp_path / "55_rendezvous_0.port").read_text() == f"{first}\n"
    second = rendezvous.agree_on_master_port(tmp_path, job, 1, 0, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["55_rendezvous_1.port"]
    assert rendezvous.agree_on_master_port(tmp_path, job, 1, 1, 2, wait_s=1) == second
    # one task alone publishes nothing: nobody would read it
    rendezvous.agree_on_master_port(tmp_path, "56", 0, 0, 1)
    assert not list(tmp_path.glob("56_*"))


def test_an_old_jobs_file_under_a_reused_job_id_is_not_read(tmp_path):
    # A re-installed controller numbers jobs from 1 again: job 58 of the old cluster left its
    # file in the same log folder. The new job 58's ranks must wait for their own rank 0.
    (tmp_path / "58_rendezvous_0.port").write_text("20001\n")  # an old job, before submission ids
    old = rendezvous.new_submission_id()
    (tmp_path / f"58_{old}_rendezvous_0.port").write_text("20002\n")
    (tmp_path / "58_3_rendezvous_0.port").write_text("20003\n")  # array task 3 of job 58: not ours
    new = rendezvous.new_submission_id()
    assert new != old and new.startswith("s") and len(new) == 13
    with pytest.raises(RuntimeError, match=f"58_{new}_rendezvous_0.port"):
        rendezvous.agree_on_master_port(tmp_path, "58", 0, 1, 2, wait_s=0.3, submission=new)
    port = rendezvous.agree_on_master_port(tmp_path, "58", 0, 0, 2, submission=new)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "58_3_rendezvous_0.port", f"58_{new}_rendezvous_0.port"]  # the old job's files are gone
    assert rendezvous.agree_on_master_port(tmp_path, "58", 0, 1, 2, wait_s=1,
                                           submission=new) == port
    with pytest.raises(ValueError, match="12 hex digits"):
        rendezvous.agree_on_master_port(tmp_path, "58", 0, 1, 2, submission="3")


def test_a_rank_that_never_sees_the_port_says_which_file_it_waited_for(tmp_path):
    with pytest.raises(RuntimeError) as error:
        rendezvous.agree_on_master_port(tmp_path, "57", 2, 1, 2, wait_s=0.5)
    message = str(error.value)
    assert f"rank 1 waited 0 s for rank 0 to write the rendezvous port to " \
           f"{tmp_path / '57_rendezvous_2.port'}" in message
    assert "shared by every node" in message


def _hold_a_jobs_ports(attempts: int) -> tuple[str, list]:
    """A job key and its first `attempts` ports, held. A port that something else on the
    machine holds already (another test's connection, one in TIME_WAIT) failed the test in CI
    with EADDRINUSE: another job id, whose ports hash elsewhere, is taken instead."""
    for _ in range(20):
        key, held = f"{a_job_id()}:0", []
        try:
            for attempt in range(attempts):
                held.append(hold_like_an_outgoing_connection(
                    rendezvous.rendezvous_port(key, attempt)))
            return key, held
        except OSError:
            for sockets in held:
                release(sockets)
    raise AssertionError("no job id whose ports could all be held")


def test_when_the_jobs_ports_are_all_taken_the_error_says_which():
    key, held = _hold_a_jobs_ports(3)
    try:
        with pytest.raises(RuntimeError, match="3 ports of 20000-32767 from .* on are all in use"):
            rendezvous.free_rendezvous_port(key, attempts=3, ephemeral=range(40000, 41000))
    finally:
        for sockets in held:
            release(sockets)


def test_a_port_for_one_host_is_free_and_never_an_ephemeral_one():
    ports = {rendezvous.any_free_port() for _ in range(20)}
    assert ports <= set(rendezvous.RENDEZVOUS_PORTS) and len(ports) > 1
    port = ports.pop()
    assert store_listens_on(port)
    # a single-process run (no launcher) meets on one of them too
    assert read_env({}).master_port in rendezvous.RENDEZVOUS_PORTS


def test_ports_of_a_lower_ephemeral_range_are_skipped_unless_it_holds_them_all():
    # A host tuned to hand out ports from 26000 on: the job's ports there are passed over.
    key = f"{a_job_id()}:0"
    tuned = range(26000, 65536)
    port = rendezvous.free_rendezvous_port(key, ephemeral=tuned)
    assert port not in tuned
    first_outside = next(rendezvous.rendezvous_port(key, k) for k in range(20000)
                         if rendezvous.rendezvous_port(key, k) not in tuned)
    assert port == first_outside  # every rank-0 choice is the same (free) one
    assert all(rendezvous.any_free_port(ephemeral=tuned) < 26000 for _ in range(10))
    # handing out every port: nothing better to pick than a free one
    everything = range(1024, 65536)
    assert rendezvous.free_rendezvous_port(key, ephemeral=everything) == \
        rendezvous.rendezvous_port(key)
    assert rendezvous.ephemeral_ports("/no/such/file") == range(32768, 61000)


def test_this_hosts_ephemeral_range_is_read_from_the_kernel(tmp_path):
    setting = tmp_path / "ip_local_port_range"
    setting.write_text("15000\t40000\n")
    assert rendezvous.ephemeral_ports(str(setting)) == range(15000, 40001)
