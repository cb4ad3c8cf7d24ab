"""The ports ranks meet on: a SLURM job's, agreed through a file, and a single host's (no torch
here: the submitting side imports seq2seq_es.slurm without it)."""

from __future__ import annotations

import os
import random
import re
import socket
import time
import zlib
from pathlib import Path

# Rendezvous ports that every rank derives from the job id, chosen below Linux's default
# ephemeral range (32768-60999). The kernel hands ephemeral ports to outgoing connections, and a
# node running gloo groups holds hundreds of them: a rendezvous port inside that range is now and
# then one of them, and the TCPStore fails with EADDRINUSE (a sweep's job failed that way in CI).
# A host whose ephemeral range reaches lower (net.ipv4.ip_local_port_range) has those ports
# skipped where a port is chosen (ephemeral_ports).
RENDEZVOUS_PORTS = range(20000, 32768)
_LINUX_DEFAULT_EPHEMERAL = range(32768, 61000)

# How long a rank waits for rank 0 to publish the rendezvous port (rank 0 publishes it before it
# imports the training code, so only a folder the nodes do not share makes this wait run out).
PORT_WAIT_S = 600.0


def rendezvous_port(key: str, attempt: int = 0) -> int:
    """The same port on every rank for the same key (a job id): a hash into RENDEZVOUS_PORTS;
    attempt k moves k ports on, for when the first one is taken."""
    offset = zlib.crc32(key.encode()) + attempt
    return RENDEZVOUS_PORTS.start + offset % len(RENDEZVOUS_PORTS)


def ephemeral_ports(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> range:
    """This host's ephemeral ports (Linux's default where the setting cannot be read)."""
    try:
        low, high = (int(value) for value in Path(path).read_text().split()[:2])
    except (OSError, ValueError):
        return _LINUX_DEFAULT_EPHEMERAL
    return range(low, high + 1)


def port_is_free(port: int) -> bool:
    """Whether a TCPStore could listen on `port` on every interface now. SO_REUSEADDR as the
    store's own socket: a closed connection's TIME_WAIT does not keep it from listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
            probe.listen(1)
        except OSError:
            return False
        return True


def _first_free(candidates, attempts: int, ephemeral: range | None, tried: str) -> int:
    """The first free candidate outside `ephemeral`, trying at most `attempts` binds; every
    candidate counts when the host hands out all of RENDEZVOUS_PORTS as ephemeral ports. None
    free: an error saying which ports were `tried`."""
    ephemeral = ephemeral_ports() if ephemeral is None else ephemeral
    everywhere = (ephemeral.start <= RENDEZVOUS_PORTS.start
                  and ephemeral.stop >= RENDEZVOUS_PORTS.stop)
    left = attempts
    for port in candidates:
        if port in ephemeral and not everywhere:
            continue
        if port_is_free(port):
            return port
        left -= 1
        if left == 0:
            break
    raise RuntimeError(f"no free port on {socket.gethostname()}: {attempts} ports of "
                       f"{RENDEZVOUS_PORTS.start}-{RENDEZVOUS_PORTS.stop - 1} {tried} are all "
                       "in use")


def free_rendezvous_port(key: str, attempts: int = 64, ephemeral: range | None = None) -> int:
    """The first of `key`'s rendezvous ports that is free on this host."""
    sequence = (rendezvous_port(key, k) for k in range(len(RENDEZVOUS_PORTS)))
    return _first_free(sequence, attempts, ephemeral, f"from {rendezvous_port(key)} on")


def any_free_port(attempts: int = 100, ephemeral: range | None = None) -> int:
    """A free port for a rendezvous that only this host's processes join (one process, torchrun
    in a test). Not port 0's choice: that is an ephemeral port, which an outgoing connection can
    take between this check and the store's bind; from RENDEZVOUS_PORTS only another explicit
    choice in that window can."""
    ports = list(RENDEZVOUS_PORTS)
    random.SystemRandom().shuffle(ports)
    return _first_free(ports, attempts, ephemeral, "picked at random")


# A submission id starts with a letter so that no array index (digits) can be read as one.
_SUBMISSION = re.compile(r"s[0-9a-f]{12}")


def new_submission_id() -> str:
    """A fresh id for one submission of a job (agree_on_master_port's `submission`)."""
    return f"s{random.SystemRandom().getrandbits(48):012x}"


def agree_on_master_port(folder: str | Path, job_id: str, restart: int, rank: int,
                         world_size: int, wait_s: float = PORT_WAIT_S,
                         submission: str = "") -> int:
    """The rendezvous port of this run of the job, the same on every rank.

    Rank 0 (on the master node) takes the first free one of the job's ports
    (free_rendezvous_port, keyed by job id and restart, so that a requeued run does not meet the
    last run's sockets) and, when there are other ranks, publishes it in `folder` (submitit's
    log folder, which every node shares already); the others wait for that file. A port derived
    from the job id alone, as before, failed the job whenever that port was taken on the master
    node.

    `submission` (TrainJob's id, drawn when the job was built and unpickled by every rank) goes
    into the file name: a cluster whose job ids start again (a re-installed controller) can give
    a new job the id of an old one in the same log folder, and without it the other ranks could
    read the old job's file before rank 0 has replaced it, and wait on a port nobody opens.
    """
    if submission and not _SUBMISSION.fullmatch(submission):
        raise ValueError(f"submission id {submission!r} is not 's' and 12 hex digits "
                         "(new_submission_id)")
    stem = f"{job_id}_{submission}_" if submission else f"{job_id}_"
    path = Path(folder) / f"{stem}rendezvous_{restart}.port"
    if rank == 0:
        port = free_rendezvous_port(f"{job_id}:{restart}")
        if world_size > 1:
            for earlier in _port_files(folder, job_id):
                earlier.unlink(missing_ok=True)  # earlier runs' files: nobody reads them again
            partial = path.with_name(path.name + ".partial")
            partial.write_text(f"{port}\n")
            os.replace(partial, path)  # readers see the whole number or no file
        return port
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.listdir(path.parent)  # revalidates an NFS client's cached "no such file"
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text.strip():
            return int(text)
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank} waited {wait_s:.0f} s for rank 0 to write the "
                               f"rendezvous port to {path}; that folder must be shared by every "
                               "node of the job")
        time.sleep(0.2)


def _port_files(folder: str | Path, job_id: str) -> list[Path]:
    """The port files of every run and submission of `job_id` in `folder`; not those of the
    array tasks "<job_id>_<index>", which a glob on "<job_id>_*" would take too."""
    name = re.compile(rf"{re.escape(job_id)}_(?:{_SUBMISSION.pattern}_)?rendezvous_\d+\.port")
    return [path for path in Path(folder).glob(f"{job_id}_*.port") if name.fullmatch(path.name)]
