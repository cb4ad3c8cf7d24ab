"""Shared test settings: offline hubs, a private cache, one thread per process (2-core CI).

Tiers: plain `pytest` runs the fast tier (pyproject's addopts: -m "not slow and not slurm");
scripts/test.sh runs everything. The local SLURM cluster (conftest_slurm.slurm_cluster) may only
be asked for by tests marked slurm, so the fast tier never starts it.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# submitit configures logging when first imported (logging.config.dictConfig), and dictConfig
# closes every handler that exists then. Imported inside a test, after rouge_score has imported
# absl (whose handler holds the stream sys.stderr was at collection, pytest's capture file), it
# closed that file and the session died with "lost sys.stderr". Imported here, before any test
# module, there is nothing of anyone's to close, and submitit's own handlers hold the session's
# stderr rather than one test's capsys buffer.
import submitit  # noqa: E402,F401

SLURM_FIXTURE = "slurm_cluster"


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything: a misuse fails in every tier
def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if SLURM_FIXTURE in getattr(item, "fixturenames", ())
                and item.get_closest_marker("slurm") is None]
    if unmarked:
        raise pytest.UsageError(f"tests that use the {SLURM_FIXTURE} fixture must be marked "
                                "@pytest.mark.slurm (plain pytest must not start the cluster): "
                                + ", ".join(unmarked))


@pytest.fixture(scope="module")
def one_rank():
    """A one-process gloo group for in-process engines and Trainers (a no-op when one is up);
    the DistEnv of rank 0 of 1."""
    from seq2seq_es.engine import distributed as D

    D.init(D.read_env({}), "gloo")
    return D.read_env({})


@pytest.fixture
def fresh_autocast(monkeypatch):
    """DeepSpeed remembers in a module global that an engine of this process used torch autocast
    (an fp16 or bf16 one at ZeRO 0), and engines built later would then scale as if in fp16: a
    test that builds engines of several precisions starts each one afresh."""
    import deepspeed.runtime.torch_autocast as ds_autocast

    monkeypatch.setattr(ds_autocast, "TORCH_AUTOCAST_INITIALIZED", False)


@pytest.fixture(scope="module")
def own_tiny_cache(tmp_path_factory):
    """Tiny twins built into the module's own cache (a shared one may be mid-rebuild by another
    worker); a module takes it with `pytestmark = pytest.mark.usefixtures("own_tiny_cache")`."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SEQ2SEQ_ES_CACHE", str(tmp_path_factory.mktemp("seq2seq_es_cache")))
    yield
    patch.undo()
