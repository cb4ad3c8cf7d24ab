"""`seq2seq-es slurm bench`: refusals before anything is submitted, the measurement rules, and a
real 1- and 2-node ZeRO-2 bench of barto-tiny on the local SLURM cluster, collected into
scaling.md/.csv/.json/.png.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest_slurm import slurm_cluster  # noqa: F401  (fixture)
from seq2seq_es.bench.scaling_jobs import (BENCH_KIND, BENCH_MANIFEST, BenchManifest, add_efficiency,
                                           measure_run, plan_bench_runs, runs_table)
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm import sweep
from seq2seq_es.slurm.sweep import SWEEP_MANIFEST

FIXTURES = Path(__file__).parent / "fixtures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL_RUN = ["--data.max_source_length", "96", "--data.max_target_length", "64",
             "--train.batch_size", "2", "--train.precision", "fp32"]


def bench(bench_dir: Path, *options: str, overrides: list[str] | None = None) -> int:
    return slurm_main(["bench", "--bench-dir", str(bench_dir), "--model", "barto-tiny",
                       "--steps", "6", "--warmup-steps", "2", "--time", "10", *options, "--",
                       *(SMALL_RUN if overrides is None else overrides)])


def tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(path), path.stat().st_mtime_ns) for path in folder.rglob("*"))


def refused(capsys, bench_dir: Path, *options: str, overrides: list[str] | None = None) -> str:
    """Runs the bench command, which must fail with one error line and change no file."""
    existed = bench_dir.exists()
    before = tree(bench_dir) if existed else []
    assert bench(bench_dir, *options, overrides=overrides) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert bench_dir.exists() == existed
    if existed:
        assert tree(bench_dir) == before
    return err


# ---- refusals, no cluster needed -------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--nodes", ""], "argument --nodes: '' has an empty entry"),
    (["--nodes", "1,,2"], "argument --nodes: '1,,2' has an empty entry"),
    (["--nodes", "1,x"], "argument --nodes: 'x' is not an integer"),
    (["--nodes", "0,1"], "argument --nodes: 0 is out of range"),
    (["--nodes", "2,2"], "argument --nodes: 2 is given twice"),
    (["--zero-stages", ","], "argument --zero-stages: ',' has an empty entry"),
    (["--zero-stages", "2,4"], "argument --zero-stages: 4 is out of range: expected "
                               "between 0 and 3"),
    (["--warmup-steps", "6"], "argument --warmup-steps: 6 warm-up steps leave none"),
    (["--steps", "0"], "argument --steps: expected an integer >= 1"),
    (["--model", "nope"], "unknown model 'nope'; known models:"),
    (["--task", "nope"], "unknown task 'nope'; known tasks:"),
    (["--task", "sqac"], "argument --task: the bench generates data in MLSUM's schema only"),
])
def test_bad_bench_options_are_refused(tmp_path, capsys, options, message):
    err = refused(capsys, tmp_path / "bench", "--nodes", "1,2", "--dry-run", *options)
    assert message in err


@pytest.mark.parametrize("overrides, message", [
    (["--dist.zero_stage", "3"], "config key 'dist.zero_stage': cannot be overridden in a bench: "
                                 "set by --zero-stages"),
    (["--train.max_steps=9"], "config key 'train.max_steps': cannot be overridden"),
    (["--train.log_every", "5"], "config key 'train.log_every': cannot be overridden"),
    (["--train.resume", "none"], "config key 'train.resume': cannot be overridden in a bench: "
                                 "the planner sets it to auto"),
    (["--train.batch_size", "0"], "config key 'train.batch_size': must be at least 1"),
    (["--optim.warmup_steps", "6"], "config key 'optim.warmup_steps'"),
    (["--nonsense"], "argument --nonsense"),
])
def test_bad_train_overrides_are_refused(tmp_path, capsys, overrides, message):
    err = refused(capsys, tmp_path / "bench", "--nodes", "1,2", "--dry-run", overrides=overrides)
    assert message in err


def test_a_folder_holding_another_bench_or_a_sweep_is_refused(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    previous = BenchManifest(kind=BENCH_KIND, model="barto-tiny", task="mlsum", steps=6,
                             warmup_steps=2, samples_per_device_step=2, gpus_per_node=0,
                             tasks_per_node=1, train_size=24, data_files={}, overrides=[],
                             slurm={}, runs=plan_bench_runs(taken, [1], [2], 1), submitted=True)
    previous.write(taken / BENCH_MANIFEST)
    err = refused(capsys, taken, "--nodes", "1,2", "--zero-stages", "2", "--dry-run")
    assert "argument --bench-dir:" in err and "already holds another bench (1 runs" in err

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / SWEEP_MANIFEST).write_text("{}")
    err = refused(capsys, sweep, "--nodes", "1", "--dry-run")
    assert f"holds {SWEEP_MANIFEST}" in err

    leftover = tmp_path / "leftover"
    (leftover / "nodes2_zero0").mkdir(parents=True)
    (leftover / "nodes2_zero0" / "metrics.jsonl").write_text("{}\n")
    err = refused(capsys, leftover, "--nodes", "1,2", "--zero-stages", "0", "--dry-run")
    assert "run folder" in err and "nodes2_zero0 is not empty" in err


def test_a_file_or_a_run_folder_is_no_bench_folder(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    # it was taken by --dry-run and ended in a FileExistsError traceback when submitting
    err = refused(capsys, a_file, "--nodes", "1", "--dry-run")
    assert err.startswith(f"error: argument --bench-dir: {a_file} is a file; expected a folder")
    run = tmp_path / "run"  # a training run's folder: the bench wrote its runs and data into it
    run.mkdir()
    (run / "config.yaml").write_text("train: {}\n")
    err = refused(capsys, run, "--nodes", "1", "--dry-run")
    assert err == (f"error: argument --bench-dir: {run} holds config.yaml (a sweep or a run); "
                   "choose another folder")


def test_the_data_is_checked_before_anything_is_submitted(tmp_path, capsys):
    # --train-size 0 was read as "not given"; one too small for a step, or a missing or short
    # file of the user's, was submitted and failed in the job after its wait in the queue.
    err = refused(capsys, tmp_path / "b", "--nodes", "1,2", "--dry-run", "--train-size", "0")
    assert err == "error: argument --train-size: expected an integer >= 1, got 0"
    err = refused(capsys, tmp_path / "b", "--nodes", "1,2", "--dry-run", "--train-size", "3")
    assert err == ("error: argument --train-size: 3 rows are less than one step of nodes2_zero0 "
                   "(2 examples per device x 2 devices)")
    files = ["--data.validation_file", str(FIXTURES / "mlsum" / "validation.jsonl")]
    missing = tmp_path / "nope.jsonl"
    err = refused(capsys, tmp_path / "b", "--nodes", "1", "--dry-run",
                  overrides=[*SMALL_RUN, "--data.train_file", str(missing), *files])
    assert err == f"error: config key 'data.train_file': file {missing} does not exist"
    err = refused(capsys, tmp_path / "b", "--nodes", "1", "--dry-run", "--train-size", "9",
                  overrides=[*SMALL_RUN, "--data.train_file", str(missing), *files])
    assert err.startswith("error: argument --train-size: sizes the data the bench generates")
    short = tmp_path / "short.jsonl"
    short.write_text((FIXTURES / "mlsum" / "train.jsonl").read_text().splitlines()[0] + "\n")
    err = refused(capsys, tmp_path / "b", "--nodes", "1,2", "--dry-run",
                  overrides=[*SMALL_RUN, "--data.train_file", str(short), *files])
    assert err.startswith("error: config key 'train.batch_size': run nodes2_zero0: one step "
                          "takes 4 examples")
    assert bench(tmp_path / "b", "--nodes", "1,2", "--dry-run", "--no-data-check",
                 overrides=[*SMALL_RUN, "--data.train_file", str(short), *files]) == 0


def test_dry_run_prints_every_job_and_writes_nothing(tmp_path, capsys, monkeypatch):
    # a partition of four 4-GPU nodes (the local cluster's two would refuse --nodes 4)
    monkeypatch.setattr(sweep, "partition_nodes",
                        lambda partition: ("gpu", {f"node{i}": 4 for i in range(4)},
                                           {f"node{i}": 64 for i in range(4)}))
    bench_dir = tmp_path / "bench"
    assert bench(bench_dir, "--nodes", "4,1,2", "--zero-stages", "3,0", "--dry-run",
                 "--gpus-per-node", "4") == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gpus-per-node=4" in out and "#SBATCH --nodes=1" in out
    names = [line.split(":")[0].strip("# ") for line in out.splitlines() if "ZeRO-" in line]
    assert names == [f"nodes{n}_zero{s}" for s in (0, 3) for n in (1, 2, 4)]
    assert "nodes4_zero3: 4 node(s), 16 device(s), ZeRO-3" in out
    # weak scaling: 6 steps x 2 samples per device x 16 devices of the largest run
    assert f"# generated data: {6 * 2 * 16} training rows" in out
    assert "--train.max_steps 6 --train.log_every 1 --train.eval_at_start false" in out
    assert "--dist.zero_stage 0 --data.max_source_length 96" in out
    assert not bench_dir.exists()


# ---- the measurement -------------------------------------------------------------------------

def test_median_after_warmup_and_efficiency(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [{"step": 1, "train/tokens_per_s": 5.0, "train/padded_fraction": 0.5},
               {"step": 2, "train/tokens_per_s": 1000.0, "train/padded_fraction": 0.1},
               {"step": 3, "train/tokens_per_s": 1.0, "train/padded_fraction": 0.1},
               {"step": 3, "train/tokens_per_s": 300.0, "train/padded_fraction": 0.2},
               {"step": 4, "train/tokens_per_s": 100.0, "train/padded_fraction": 0.3},
               {"step": 5, "train/tokens_per_s": 200.0, "train/padded_fraction": 0.4},
               {"step": 5, "eval/rouge1": 1.0}]
    text = "".join(json.dumps(record) + "\n" for record in records)
    (run_dir / "metrics.jsonl").write_text(text + '{"step": 6, "train/tok')  # being written
    measured = measure_run(run_dir, warmup_steps=2)
    # steps 3 (its last record), 4 and 5; the warm-up steps 1 and 2 are left out
    assert measured == {"real_tokens_per_s": 200.0, "padded_fraction": 0.3, "steps_measured": 3,
                        "last_step": 5}

    rows = [{"nodes": n, "zero_stage": s, "real_tokens_per_s": tps}
            for n, s, tps in [(1, 2, 100.0), (2, 2, 150.0), (4, 2, None), (2, 3, 80.0),
                              (4, 3, 120.0)]]
    add_efficiency(rows)
    # against the one-node run of the same stage; stage 3 has none, a run without a rate neither
    assert [row["efficiency"] for row in rows] == [1.0, 0.75, None, None, None]
    assert [row["speedup"] for row in rows] == [1.0, 1.5, None, None, None]


def test_runs_not_finished_are_marked():
    rows = [{"run_dir": "/b/nodes1_zero2", "job_id": "7", "world_size": 1, "finished": True,
             "state": "COMPLETED", "tokens_per_s_per_device": 50.0, "padded_fraction": 0.25,
             "steps_measured": 4},
            {"run_dir": "/b/nodes2_zero2", "job_id": "8", "world_size": 2, "finished": False,
             "state": "RUNNING", "tokens_per_s_per_device": 40.0, "padded_fraction": None,
             "steps_measured": 1}]
    lines = runs_table(rows).splitlines()
    assert lines[2] == "| nodes1_zero2 | 7 | 1 | 50.0 | 25.0% | 4 | COMPLETED |"
    assert lines[3] == "| nodes2_zero2* | 8 | 2 | 40.0 | - | 1 | RUNNING |"
    assert lines[-1].startswith("* not finished (nodes2_zero2)")


# ---- refusals that ask the cluster -----------------------------------------------------------

@pytest.mark.slurm
@pytest.mark.parametrize("options, message", [
    (["--nodes", "1,3"], "argument --nodes: 3 nodes asked, but partition 'debug' has 2 "
                         "(node1, node2)"),
    (["--nodes", "1", "--partition", "nowhere"], "SLURM does not know partition 'nowhere'"),
    (["--nodes", "1", "--gpus-per-node", "1"], "argument --gpus-per-node: 1 node(s) with 1 "
                                               "GPU(s) each asked, but partition 'debug' has 0"),
])
def test_requests_the_partition_cannot_hold_are_refused(slurm_cluster, tmp_path, capsys,  # noqa: F811
                                                        options, message):
    err = refused(capsys, tmp_path / "bench", "--zero-stages", "2", *options)
    assert message in err


@pytest.mark.slurm
def test_a_dry_run_is_warned_of_what_this_cluster_lacks(slurm_cluster, tmp_path, capsys):  # noqa: F811
    # As submit and sweep: a dry run's script may be meant for a GPU cluster (it was refused
    # here, so a GPU bench script could not be looked at from a login node's test cluster).
    for options, warning in (
            (["--gpus-per-node", "4"], "warning: argument --gpus-per-node: 2 node(s) with 4 "
                                       "GPU(s) each asked, but partition 'debug' has 0"),
            (["--partition", "gpu"], "warning: argument --partition: SLURM does not know "
                                     "partition 'gpu'; known partitions: debug")):
        assert bench(tmp_path / "bench", "--nodes", "1,2", "--zero-stages", "2", "--dry-run",
                     *options) == 0
        out, err = capsys.readouterr()
        assert err.startswith(warning) and "#SBATCH" in out
    # more nodes than the partition has: refused, dry run or not, as submit refuses it
    assert "argument --nodes: 3 nodes asked" in refused(capsys, tmp_path / "bench", "--nodes",
                                                        "1,3", "--zero-stages", "2", "--dry-run")


# ---- a real bench ----------------------------------------------------------------------------

def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.slurm
@pytest.mark.slow
def test_bench_one_and_two_nodes_zero2(slurm_cluster, tmp_path, capsys):  # noqa: F811
    bench_dir = tmp_path / "bench"
    assert bench(bench_dir, "--nodes", "1,2", "--zero-stages", "2", "--wait",
                 "--wait-timeout-min", "10") == 0
    out = capsys.readouterr().out

    manifest = json.loads((bench_dir / BENCH_MANIFEST).read_text())
    assert manifest["train_size"] == 6 * 2 * 2  # steps x micro-batch x devices of 2 nodes
    assert len((bench_dir / "data" / "train.jsonl").read_text().splitlines()) == 24
    two_nodes = bench_dir / "nodes2_zero2"
    start = json.loads((two_nodes / "slurm_events.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2
    config = (two_nodes / "config.yaml").read_text()
    assert "zero_stage: 2" in config and "max_steps: 6" in config and "log_every: 1" in config

    result = json.loads((bench_dir / "scaling.json").read_text())
    rows = {row["nodes"]: row for row in result["rows"]}
    assert result["bench"]["node_counts"] == [1, 2] and "nodes" not in result["bench"]["slurm"]
    assert sorted(rows) == [1, 2]
    for nodes, row in rows.items():
        assert row["zero_stage"] == 2 and row["world_size"] == nodes
        assert row["state"] == "COMPLETED" and row["finished"] is True
        assert row["real_tokens_per_s"] > 0 and row["steps_measured"] == 4
    assert rows[1]["efficiency"] == 1.0
    assert rows[2]["efficiency"] == pytest.approx(
        rows[2]["real_tokens_per_s"] / (2 * rows[1]["real_tokens_per_s"]))

    with (bench_dir / "scaling.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["nodes"], r["zero_stage"]) for r in csv_rows] == [("1", "2"), ("2", "2")]
    assert float(csv_rows[0]["efficiency"]) == 1.0 and float(csv_rows[1]["real_tokens_per_s"]) > 0

    markdown = (bench_dir / "scaling.md").read_text()
    lines = markdown.splitlines()
    [header] = [line for line in lines if line.startswith("| ZeRO stage |")]
    assert "| efficiency |" in header
    table = [line for line in lines if line.startswith("| 2 |")]
    assert [line.split(" | ")[1] for line in table] == ["1", "2"]
    assert table[0].endswith("| 1.00 | 100.0% |")
    runs = [line for line in lines if line.startswith("| nodes")]
    assert [line.split(" | ")[0] for line in runs] == ["| nodes1_zero2", "| nodes2_zero2"]
    assert all(line.endswith("| COMPLETED |") for line in runs) and "not finished" not in markdown
    assert all(line in out for line in table + runs)  # the tables are printed

    width, height = png_size(bench_dir / "scaling.png")
    assert width > 100 and height > 100
    import matplotlib.image

    pixels = matplotlib.image.imread(bench_dir / "scaling.png")
    assert pixels.std() > 0  # something is drawn

    # collect reruns on the same folder and gives the same numbers; a second bench there is refused
    assert slurm_main(["bench", "--collect", str(bench_dir)]) == 0
    assert json.loads((bench_dir / "scaling.json").read_text())["rows"] == result["rows"]
    capsys.readouterr()
    err = refused(capsys, bench_dir, "--nodes", "1", "--zero-stages", "0")
    assert "already holds another bench" in err
    assert all(row["code"] == rows[1]["code"] for row in result["rows"])  # one code: no warning

    # A copy is read from where it is: the original's results had been reported for it.
    copy = tmp_path / "copy"
    shutil.copytree(bench_dir, copy)
    (copy / "nodes2_zero2" / "metrics.jsonl").write_text(
        '{"step": 1, "train/tokens_per_s": 5.0}\nnot json\n{"step": 3}\n')
    (copy / "nodes1_zero2" / "metrics.jsonl").unlink()
    assert slurm_main(["bench", "--collect", str(copy)]) == 1  # completed jobs without results
    out, err = capsys.readouterr()
    copied = {row["nodes"]: row for row in json.loads((copy / "scaling.json").read_text())["rows"]}
    assert copied[2]["run_dir"] == str(copy / "nodes2_zero2")
    assert copied[1]["real_tokens_per_s"] is None and copied[2]["real_tokens_per_s"] is None
    # one broken file names its line and leaves the other runs collected, in the table too
    assert f"nodes2_zero2: file {copy / 'nodes2_zero2' / 'metrics.jsonl'}, line 2: not valid" in err
    assert (f"nodes1_zero2: completed, but {copy / 'nodes1_zero2' / 'metrics.jsonl'} holds no "
            "step after the 2 warm-up step(s)") in err
    assert "| nodes1_zero2 | " in out and "nodes1_zero2: completed, but" in out
