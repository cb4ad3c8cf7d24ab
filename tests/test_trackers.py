"""Trackers (`train.report_to`: tensorboard by default, wandb as an optional extra, none) and
`train.push_to_hub` (checked at the start of a run, final/ uploaded at its end).

The W&B run is a real one in offline mode, read back from its own `.wandb` file. The hub checks
run against the real environment (no network here) and against a small local HTTP server that
answers the hub's whoami and create-repo calls; only the upload call itself is replaced.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine_runs import ENTRY, REPO, _env, base_args, command, demo_files, run
from seq2seq_es.config import compose
from seq2seq_es.engine.run_dir import RunLog, check_trackers
from seq2seq_es.errors import ConfigError, Seq2SeqEsError


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def wandb_records(path: Path):
    """The protobuf records of a W&B run file: a 7-byte header (':W&B', 0xBEE1, version), then
    32 KiB blocks of chunks (crc32 4 bytes, length 2, type 1: full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, block = 7, b"", 32 * 1024
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += room
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(path: Path) -> list[dict]:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("tracker-data"), train_size=16)


# ---------------------------------------------------------------------------------------------
# report_to


@pytest.mark.slow
def test_wandb_offline_run_on_two_ranks_logs_what_metrics_jsonl_holds(files, tmp_path,
                                                                      monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)  # the group must come from the key
    (tmp_path / "wandb-dir").mkdir()
    out = tmp_path / "run"
    run("torchrun", 2, base_args(files, out, steps=4, batch=2, extra=[
        "--train.report_to", "tensorboard,wandb", "--train.eval_at_end", "true",
        "--data.max_eval_samples", "2", "--train.eval_test", "false",
        "--train.run_group", "mygroup", "--train.seed", "7"]))
    # Rank 0 alone logs: one W&B run, whose id the run folder keeps for a resume.
    runs = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run_id = (out / "wandb_run_id").read_text()
    run_file = runs[0] / f"run-{run_id}.wandb"
    assert run_file.is_file()
    history = wandb_history(run_file)
    logged = {(row["step"], key): value for row in history for key, value in row.items()
              if not key.startswith("_") and key != "step"}
    expected = {(record["step"], key): value for record in metrics(out)
                for key, value in record.items() if key not in ("step", "time")}
    assert {key for _, key in expected} >= {"train/loss", "train/lr", "eval/loss", "eval/rouge1"}
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-9), key
    assert sorted({step for step, _ in logged}) == [1, 2, 3, 4]
    # The resolved config travels with the W&B run; TensorBoard, the other tracker, also wrote.
    run_record = next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["train"]["report_to"] == "tensorboard,wandb"
    # train.run_group is the W&B group (a sweep's runs compare in one), and the seed a tag that
    # tells a grid point's seeds apart.
    assert run_record.run_group == "mygroup" and config["train"]["run_group"] == "mygroup"
    assert list(run_record.tags) == ["mlsum", "barto-tiny", "seed-7"]
    assert config["model"]["name"] == "barto-tiny" and config["train"]["max_steps"] == 4
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


_SEGMENTS = """
import sys
from pathlib import Path
from seq2seq_es.config import compose
from seq2seq_es.engine.run_dir import WandbTracker
cfg = compose("mlsum", "barto-tiny", overrides={"train.report_to": "wandb"})
run = Path(sys.argv[1]) / "run"
run.mkdir()
for first_step, steps in ((0, (1, 2, 3)), (3, (3, 4))):  # killed after 3, checkpoint at 2
    tracker = WandbTracker(run, cfg, first_step)
    for step in steps:
        tracker.log(step, {"train/loss": float(step)})
    tracker.close()
"""


def test_an_offline_resumed_segment_is_a_wandb_run_of_its_own(tmp_path):
    # Both segments were offline runs of one id: `wandb sync` of the second replaced the
    # first's history (wandb cannot continue an offline run), so the first segment was lost.
    pytest.importorskip("wandb")
    env = {**_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path / "wandb-dir")}
    (tmp_path / "wandb-dir").mkdir()
    proc = subprocess.run([sys.executable, "-c", _SEGMENTS, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = (tmp_path / "run" / "wandb_run_id").read_text()
    steps = {}
    for run_file in (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb"):
        steps[run_file.stem[len("run-"):]] = [row["step"] for row in wandb_history(run_file)]
    assert steps == {run_id: [1, 2, 3], f"{run_id}-from-2": [3, 4]}
    assert f"note: W&B offline: this resumed segment is the W&B run {run_id}-from-2 ('run " \
        "(from step 2)')" in proc.stderr


_GROUPED_RUNS = """
import sys
from pathlib import Path
from seq2seq_es.config import compose
from seq2seq_es.engine.run_dir import WandbTracker
for name, group in (("empty", ""), ("given", "mine")):
    cfg = compose("mlsum", "barto-tiny", overrides={"train.report_to": "wandb",
                                                    "train.run_group": group})
    (Path(sys.argv[1]) / name).mkdir()
    tracker = WandbTracker(Path(sys.argv[1]) / name, cfg)
    tracker.log(1, {"train/loss": 1.0})
    tracker.close()
"""


def test_an_empty_run_group_leaves_wandb_its_environment_group_and_a_given_one_wins(tmp_path):
    """train.run_group '' passes no group, so WANDB_RUN_GROUP (read by wandb itself) groups the
    run; '' passed on would have replaced it by no group. A real offline W&B run each, in a
    child process: wandb reads its environment once per process."""
    pytest.importorskip("wandb")
    env = {**_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_RUN_GROUP": "from-env"}
    (tmp_path / "wandb-dir").mkdir()
    proc = subprocess.run([sys.executable, "-c", _GROUPED_RUNS, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups = {}
    for name in ("empty", "given"):
        run_id = (tmp_path / name / "wandb_run_id").read_text()
        (run_file,) = (tmp_path / "wandb-dir" / "wandb").glob(f"offline-run-*/run-{run_id}.wandb")
        groups[name] = next(r.run.run_group for r in wandb_records(run_file)
                            if r.WhichOneof("record_type") == "run")
    assert groups == {"empty": "from-env", "given": "mine"}


def test_report_to_none_writes_only_metrics_jsonl_and_tensorboard_is_the_default(tmp_path):
    cfg = compose(task="mlsum", model="barto-tiny",
                  overrides={"train.report_to": "none", "train.progress_bar": "false"})
    log = RunLog(tmp_path / "none", cfg, is_main=True, total_steps=2, start_step=0)
    log.log(1, {"train/loss": 1.5})
    log.close()
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == [
        "config.yaml", "metrics.jsonl", "versions.json"]
    assert metrics(tmp_path / "none")[0]["train/loss"] == 1.5

    default = compose(task="mlsum", model="barto-tiny", overrides={"train.progress_bar": "false"})
    assert default.train.report_to == "tensorboard"
    log = RunLog(tmp_path / "default", default, is_main=True, total_steps=2, start_step=0)
    assert [type(t).__name__ for t in log.trackers] == ["TensorBoardTracker"]
    log.log(1, {"train/loss": 1.5})
    log.close()
    assert list((tmp_path / "default" / "tensorboard").glob("events.out.tfevents.*"))
    # Another rank opens nothing and writes nothing.
    other = RunLog(tmp_path / "rank1", default, is_main=False, total_steps=2, start_step=0)
    other.log(1, {"train/loss": 1.5})
    other.close()
    assert not (tmp_path / "rank1").exists()


def test_wandb_without_the_library_is_refused(monkeypatch):
    cfg = compose(task="mlsum", model="barto-tiny", overrides={"train.report_to": "wandb"})
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ConfigError) as err:
        check_trackers(cfg)
    assert err.value.key == "train.report_to"
    assert "pip install seq2seq-es[wandb]" in str(err.value)


@pytest.mark.parametrize("launcher, nproc", [
    ("none", 1), pytest.param("torchrun", 2, marks=pytest.mark.slow)])
def test_a_run_without_wandb_stops_before_training_with_the_install_line(files, tmp_path,
                                                                         launcher, nproc):
    shadow = tmp_path / "no-wandb" / "wandb"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named wandb')\n")
    out = tmp_path / "run"
    proc = subprocess.run(command(launcher, nproc, base_args(files, out, extra=[
        "--train.report_to", "tensorboard,wandb"])), cwd=REPO, capture_output=True, text=True,
        env={**_env(), "PYTHONPATH": str(shadow.parent)}, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    line = ("error: config key 'train.report_to': wandb is not installed: pip install "
            "seq2seq-es[wandb]")
    # Rank 0 checks and says it; under torchrun the other rank raises the same refusal instead
    # of waiting, and leaves without a second copy of the line. (Lines of its own: torchrun's
    # closing summary repeats it after `traceback :`.)
    said = [text for text in proc.stderr.splitlines() if text.startswith(line)]
    assert len(said) == 1, proc.stderr[-3000:]
    if launcher == "none":
        assert proc.returncode == 2
    assert not out.exists()  # nothing was loaded, trained or written


_LOGIN_CHECKS = """
import os
from seq2seq_es.config import compose
from seq2seq_es.engine.run_dir import check_tracker_login
from seq2seq_es.errors import ConfigError
cfg = compose("mlsum", "barto-tiny", overrides={"train.report_to": "wandb"})
# In this order: wandb keeps a login for the rest of the process, and only the last one logs in.
for name, value in (("", ""), ("WANDB_MODE", "offline"), ("WANDB_API_KEY", "abc"),
                    ("WANDB_API_KEY", "x" * 40)):
    os.environ.pop("WANDB_MODE", None)
    if name:
        os.environ[name] = value
    try:
        check_tracker_login(cfg)
        print("PASSED")
    except ConfigError as exc:
        print(exc)
"""


def _without_wandb_login(folder: Path) -> dict[str, str]:
    """This environment with no W&B credentials or mode: a netrc and a wandb settings folder of
    its own (not a HOME of its own: the caches under HOME would be built again, a minute)."""
    env = {key: value for key, value in _env().items() if not key.startswith("WANDB_")}
    return {**env, "NETRC": str(folder / "netrc"), "WANDB_CONFIG_DIR": str(folder / "wandb")}


def test_wandb_without_an_api_key_is_refused_before_anything_loads(files, tmp_path):
    # Without a terminal, wandb.init raised "No API key configured" after the data and the
    # model had loaded. A child process each: wandb keeps its login for the process.
    pytest.importorskip("wandb")
    # WANDB_SILENT: with a key, wandb.login prints "logged in as" after asking the server for
    # the user name through its wandb-core service (a Go process started for it, then a 5 s
    # network timeout here). Beside the suite's load that start once ran past 300 s; silent,
    # the four checks take under a second and test the same code of ours.
    proc = subprocess.run([sys.executable, "-c", _LOGIN_CHECKS], cwd=REPO, text=True,
                          capture_output=True,
                          env={**_without_wandb_login(tmp_path), "WANDB_SILENT": "true"},
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_key, offline, malformed, key = proc.stdout.strip().splitlines()[-4:]
    assert no_key == ("config key 'train.report_to': wandb has no API key on this machine "
                      "(WANDB_API_KEY, `wandb login`, ~/.netrc): log in, or set "
                      "WANDB_MODE=offline to keep the W&B run in the run folder and `wandb "
                      "sync` it later, or drop wandb from train.report_to")
    assert offline == "PASSED"
    assert malformed.startswith(
        "config key 'train.report_to': wandb cannot log in: WANDB_API_KEY invalid")
    assert key == "PASSED"  # read locally: no network here
    out = tmp_path / "run"
    proc = subprocess.run(command("none", 1, base_args(files, out, extra=[
        "--train.report_to", "wandb"])), cwd=REPO, capture_output=True, text=True,
        env=_without_wandb_login(tmp_path), stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: config key 'train.report_to': wandb has no API key" in proc.stderr
    assert not out.exists()  # refused before the run folder was made


# ---------------------------------------------------------------------------------------------
# push_to_hub


class FakeHub:
    """The two hub endpoints the run calls before the upload: whoami-v2 and repos/create."""

    def __init__(self, whoami: dict):
        self.requests: list[tuple[str, str, dict, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                hub.requests.append(("GET", self.path, {}, self.headers.get("authorization")))
                if self.path == "/api/whoami-v2":
                    return self._reply(200, whoami)
                self._reply(404, {"error": "not here"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                hub.requests.append(("POST", self.path, body, self.headers.get("authorization")))
                if self.path == "/api/repos/create":
                    repo = f"{body['organization']}/{body['name']}"
                    return self._reply(200, {"url": f"{hub.url}/{repo}"})
                self._reply(404, {"error": "not here"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


WRITER = {"type": "user", "name": "tester", "orgs": [{"name": "bsc-lt"}],
          "auth": {"type": "access_token", "accessToken": {"role": "write"}}}


@pytest.fixture
def online_hub(monkeypatch):
    """huggingface_hub online, pointed at a FakeHub, with a token (in this process)."""
    import huggingface_hub.constants as constants

    hubs = []

    def make(whoami=WRITER):
        hub = FakeHub(whoami)
        hubs.append(hub)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        return hub

    yield make
    for hub in hubs:
        hub.close()


def push_cfg(repo: str, **extra):
    return compose(task="mlsum", model="barto-tiny",
                   overrides={"train.push_to_hub": repo, **extra})


def train_process_env(**changes) -> dict[str, str]:
    env = _env()
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.parametrize("case, changes, message", [
    ("offline", {}, "HF_HUB_OFFLINE is set, so the hub cannot be reached"),
    ("no token", {"HF_HUB_OFFLINE": None, "HF_TOKEN": None}, "no Hugging Face token: log in "
     "with `hf auth login` or set HF_TOKEN"),
    ("no network", {"HF_HUB_OFFLINE": None, "HF_TOKEN": "hf_not_a_real_token"},
     "cannot reach https://huggingface.co"),
])
def test_push_to_hub_is_refused_before_training_when_it_could_not_upload(
        files, tmp_path, case, changes, message):
    out = tmp_path / "run"
    # A private HF_HOME: no token stored by `hf auth login` on this machine is found.
    env = train_process_env(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=None,
                            HF_TOKEN_PATH=None, **changes)
    proc = subprocess.run(command("none", 1, base_args(files, out, extra=[
        "--train.push_to_hub", "tester/tiny-mlsum"])), cwd=REPO, capture_output=True, text=True,
        env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    if case == "no network" and "refused the token" in line:  # a machine with network: HTTP 401
        message = "https://huggingface.co refused the token (HTTP 401)"
    assert line.startswith("error: config key 'train.push_to_hub': " + message), line
    assert not out.exists()


@pytest.mark.parametrize("repo, whoami, overrides, message", [
    ("a/b/c", WRITER, {}, "'a/b/c' is not a hub repo id"),
    ("tester/x", WRITER, {"train.export": "false"}, "needs train.export true"),
    ("tester/x", {**WRITER, "auth": {"accessToken": {"role": "read"}}}, {},
     "the token of user tester is read-only"),
    ("someone-else/x", WRITER, {}, "user tester cannot create repos under 'someone-else' "
     "(their organisations: bsc-lt)"),
])
def test_push_to_hub_refusals_named_by_the_hub_answer(online_hub, repo, whoami, overrides,
                                                      message):
    from seq2seq_es.engine.hub import check_push

    online_hub(whoami)
    with pytest.raises(ConfigError) as err:
        check_push(push_cfg(repo, **overrides))
    assert err.value.key == "train.push_to_hub"
    assert message in str(err.value)


# The hub API the push check and the upload call; huggingface_hub may GET others by itself.
OUR_HUB_CALLS = ("/api/whoami-v2", "/api/repos/create")


def test_push_to_hub_check_passes_for_own_and_org_repos(online_hub):
    from seq2seq_es.engine.hub import check_push

    hub = online_hub()
    assert check_push(push_cfg("tiny-mlsum")) == "tester/tiny-mlsum"
    assert check_push(push_cfg("bsc-lt/tiny-mlsum")) == "bsc-lt/tiny-mlsum"
    # Only the hub API we call: huggingface_hub >= 2.4 also fetches its agent-harness
    # registry (/api/agent-harnesses) from the same endpoint first, when it has no cached copy.
    ours = [r for r in hub.requests if r[1] in OUR_HUB_CALLS]
    assert ours[0][:2] == ("GET", "/api/whoami-v2")
    assert ours[0][3] == "Bearer hf_test_token"


UPLOAD_SHIM = """
import json, runpy, sys
from pathlib import Path
import huggingface_hub

record = Path(sys.argv.pop(1))

def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None, **kwargs):
    files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*")
                   if p.is_file())
    record.write_text(json.dumps({"repo_id": repo_id, "folder_path": str(folder_path),
                                  "repo_type": repo_type, "commit_message": commit_message,
                                  "files": files, "kwargs": sorted(kwargs)}))
    return "fake-commit"

huggingface_hub.HfApi.upload_folder = upload_folder  # the one call replaced: the upload itself
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_run_ends_by_uploading_final_to_the_repo(files, tmp_path):
    hub = FakeHub(WRITER)
    try:
        shim = tmp_path / "shim.py"
        shim.write_text(UPLOAD_SHIM)
        record = tmp_path / "upload.json"
        out = tmp_path / "run"
        env = train_process_env(HF_HUB_OFFLINE=None, HF_ENDPOINT=hub.url,
                                HF_TOKEN="hf_test_token", HF_HOME=str(tmp_path / "hf-home"))
        args = base_args(files, out, steps=2, extra=["--train.push_to_hub", "bsc-lt/tiny-mlsum",
                                                     "--train.report_to", "none"])
        proc = subprocess.run([sys.executable, str(shim), str(record), ENTRY, *args], cwd=REPO,
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
    finally:
        hub.close()
    assert f"uploaded final/ to {hub.url}/bsc-lt/tiny-mlsum" in proc.stdout
    # The hub was asked who is logged in (at the start) and to create the repo (at the end).
    # (huggingface_hub itself may GET other endpoints, e.g. /api/agent-harnesses; nothing else
    # is written: the upload went through the replaced call only.)
    ours = [r for r in hub.requests if r[1] in OUR_HUB_CALLS]
    assert [(method, path) for method, path, _, _ in ours] == [
        ("GET", "/api/whoami-v2"), ("POST", "/api/repos/create")]
    assert [r[1] for r in hub.requests if r[0] != "GET"] == ["/api/repos/create"]
    assert ours[1][2]["name"] == "tiny-mlsum" and ours[1][2]["organization"] == "bsc-lt"
    # train.hub_private's default: nothing goes public unasked (huggingface_hub sends it as
    # "visibility"; older releases as "private")
    assert ours[1][2].get("visibility", ours[1][2].get("private")) in ("private", True)
    assert all(auth == "Bearer hf_test_token" for _, _, _, auth in ours)
    upload = json.loads(record.read_text())
    assert upload["repo_id"] == "bsc-lt/tiny-mlsum" and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == out / "final"
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md",
            "final_results.json"} <= set(upload["files"])
    assert (out / "DONE").is_file()
    results = json.loads((out / "final_results.json").read_text())
    assert json.loads((out / "final" / "final_results.json").read_text()) == results
    card = (out / "final" / "README.md").read_text()
    assert card.startswith("---\nlanguage: es\n") and "# barto-tiny fine-tuned on mlsum" in card


def test_a_failed_upload_names_the_command_that_uploads_by_hand(online_hub, tmp_path,
                                                                 monkeypatch):
    import huggingface_hub

    from seq2seq_es.engine.hub import push_final

    online_hub()
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final_results.json").write_text(json.dumps({
        "task": "mlsum", "model": "barto-tiny", "main_metric": "rouge1", "best_step": 2,
        "steps": 4, "validation": {"rouge1": 0.5, "loss": 3.0}, "test": None}))

    def refuse(self, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refuse)
    with pytest.raises(Seq2SeqEsError) as err:
        push_final(out, push_cfg("tester/tiny"))
    assert f"the run is complete: upload it by hand with `hf upload tester/tiny " \
           f"{out / 'final'} . --repo-type model --private`" in str(err.value)
    assert "| rouge1 | 0.5000 |" in (out / "final" / "README.md").read_text()


@pytest.mark.parametrize("progress_bar", [True, False])
def test_the_runs_record_lines_go_to_stdout_with_or_without_the_progress_bar(tmp_path, capsys,
                                                                             progress_bar):
    from seq2seq_es.config import compose
    from seq2seq_es.engine.run_dir import RunLog

    cfg = compose(task="mlsum", model="barto-tiny",
                  overrides={"train.progress_bar": str(progress_bar).lower(),
                             "train.output_dir": str(tmp_path / "run")})
    log = RunLog(tmp_path / "run", cfg, True, total_steps=4, start_step=0)
    log.write("step 2: eval/loss 1.0000")
    log.close()
    captured = capsys.readouterr()
    assert "step 2: eval/loss 1.0000" in captured.out
    assert "step 2: eval/loss" not in captured.err


class _Stderr:
    """A stderr that is a log file (isatty False, as under SLURM or `2> file`)."""
    tty = False

    def __init__(self):
        self.text = ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


class _Terminal(_Stderr):
    """A stderr that is a terminal (as an interactive shell's is)."""
    tty = True


def _progress_log(tmp_path, start_step=0):
    cfg = compose(task="mlsum", model="barto-tiny",
                  overrides={"train.report_to": "none", "train.output_dir": str(tmp_path / "run")})
    return RunLog(tmp_path / "run", cfg, True, total_steps=10, start_step=start_step,
                  resumed=start_step > 0)


def test_progress_is_a_line_per_log_on_stdout_when_stderr_is_a_file(tmp_path, capsys,
                                                                    monkeypatch):
    # A SLURM log or `2> file`: a redrawn tqdm bar would be carriage returns there.
    log_file = _Stderr()
    monkeypatch.setattr(sys, "stderr", log_file)
    log = _progress_log(tmp_path, start_step=4)  # resumed at step 4
    assert log.bar is None
    log.progress(5, loss=1.5, lr=2e-4, tokens_per_s=100.0)
    log.progress(6, loss=1.25, lr=2e-4, tokens_per_s=12345.0, grad_norm=0.8123)
    log.close()
    first, line = [line for line in capsys.readouterr().out.splitlines()
                   if line.startswith(("step 5/10", "step 6/10"))]
    assert first.startswith("step 5/10: train/loss 1.5000, lr 2.00e-04, 100 tokens/s, ")
    assert line.startswith("step 6/10: train/loss 1.2500, lr 2.00e-04, grad_norm 0.812, "
                           "12,345 tokens/s, elapsed ")
    assert ", left ~0:00:0" in line  # 4 steps left at the rate since step 5
    # this process's clock: the segments before the resume are not in the checkpoint
    assert " since resuming at step 4, left" in line
    assert "left" not in first  # the first logged step's time includes the start-up
    assert log_file.text == ""


def test_progress_is_a_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    log = _progress_log(tmp_path)
    assert log.bar is not None
    log.progress(6, loss=1.25, lr=2e-4, tokens_per_s=12345.0, grad_norm=0.8123)
    # The steps done, the bar closes: it was redrawn under the end's scoring, the export's
    # bars, and after the `finished:` line.
    log.end_progress()
    drawn = terminal.text
    log.write("finished: run")
    log.progress(7, loss=1.0, lr=2e-4, tokens_per_s=1.0)
    log.close()
    out = capsys.readouterr().out
    assert terminal.text == drawn and "finished: run" in out and "step 6/10" not in out
    assert "loss=1.2500" in terminal.text and "6/10" in terminal.text
    assert "gnorm=0.812" in terminal.text


def test_library_progress_bars_are_hidden_only_when_stderr_is_not_a_terminal(monkeypatch):
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    from seq2seq_es.engine.progress import quiet_library_progress

    def enabled():
        return (datasets.is_progress_bar_enabled(),
                transformers.utils.logging.is_progress_bar_enabled(),
                not huggingface_hub.utils.are_progress_bars_disabled())
    def enable():
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()
    try:
        enable()  # an in-process run of an earlier test (stderr captured) hid them
        monkeypatch.setattr(sys, "stderr", _Terminal())
        quiet_library_progress()
        assert enabled() == (True, True, True)
        monkeypatch.setattr(sys, "stderr", _Stderr())
        quiet_library_progress()
        assert enabled() == (False, False, False)
    finally:
        enable()


def test_deepspeed_does_not_warn_about_a_missing_gpu_on_a_cpu_run(tmp_path):
    script = ("from seq2seq_es.engine import distributed as D\n"
              "from seq2seq_es.process_exit import exit_with\n"
              "D.init(D.read_env())\n"
              "import deepspeed.accelerator as a\n"
              "print('accelerator', a.get_accelerator().device_name())\n"
              "D.close()\n"
              "exit_with(0)\n")
    env = {key: value for key, value in _env().items() if key != "DS_ACCELERATOR"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run also on a machine with a GPU
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "accelerator cpu" in done.stdout
    assert "unable to detect" not in done.stdout + done.stderr
    assert "built successfully" not in done.stdout  # DeepSpeed's line on every CPU start


def test_evaluation_bars_redraw_once_a_minute_in_a_log_file(monkeypatch):
    from seq2seq_es.engine.evaluation import _progress

    monkeypatch.setattr(sys, "stderr", _Stderr())
    in_file = _progress(10, "eval", True)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    on_terminal = _progress(10, "eval", True)
    assert (in_file.mininterval, on_terminal.mininterval) == (60, 0.1)
    in_file.close()
    on_terminal.close()


def test_a_jupyter_kernels_output_counts_as_a_terminal():
    from seq2seq_es.engine.progress import is_terminal

    # ipykernel's OutStream says isatty() False, yet its cell redraws bars (tqdm.auto: a widget)
    kernel_stream = type("OutStream", (_Stderr,), {"__module__": "ipykernel.iostream"})()
    assert is_terminal(kernel_stream) and not is_terminal(_Stderr())


def test_progress_bar_false_gives_lines_not_silence(tmp_path, capsys, monkeypatch):
    # It printed no training line at all, where the Trainer's disable_tqdm still logs.
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    cfg = compose(task="mlsum", model="barto-tiny",
                  overrides={"train.report_to": "none", "train.progress_bar": "false",
                             "train.output_dir": str(tmp_path / "run")})
    log = RunLog(tmp_path / "run", cfg, True, total_steps=10, start_step=0)
    assert log.bar is None
    log.progress(6, loss=1.25, lr=2e-4, tokens_per_s=12345.0)
    log.close()
    assert [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("step 6/10: train/loss 1.2500, lr 2.00e-04, 12,345 tokens/s")]
    assert terminal.text == ""
