"""`slurm sweep --seeds` and what collect makes of a grid point's seeds (no cluster): the seed
axis added to the paper's grid and to --no-grid, each refusal, the manifest's record of the
seeds, a grid point chosen by its mean dev score (never by its luckiest seed), means and sample
standard deviations as shown, seeds without scores remarked, run folders grouped by their
config's train.seed, and status and resume of a seeded sweep."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from seq2seq_es.config import SEED_MAX
from seq2seq_es.errors import ConfigError
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.job import DEFAULT_ENTRY
from seq2seq_es.slurm.results_table import (CSV_COLUMNS, SEED_CSV_COLUMNS, build_table,
                                            format_markdown)
from seq2seq_es.slurm.sweep import (SWEEP_MANIFEST, load_manifest, new_manifest, parse_seeds,
                                    plan_sweep)

PROBE = "seq2seq_es.slurm.probe:main"
LR = {"optim.lr": ["3e-5", "5e-5"]}


def _sweep(tmp_path, *extra):
    return ["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--dry-run", *extra]


def _listed_runs(out):
    """The run names a dry run lists under '# N run(s) in ...'."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if " run(s) in " in line)
    return [line[len("#   "):] for line in lines[start + 1:] if line.startswith("#   ")]


# ---- planning --------------------------------------------------------------------------------

def test_seeds_add_a_last_axis_to_the_papers_grid_and_to_the_recipe(tmp_path, capsys):
    assert slurm_main(_sweep(tmp_path, "--pair", "barto:mlsum", "--pair", "barto:wmt13-en-es",
                             "--seeds", "1,2,3", "--max-parallel", "4")) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-38%4" in out  # (12 grid points + the recipe) x 3 seeds
    assert ("# 39 runs: 2 pairs x grid points x 3 seeds (13 distinct grid points; train.seed "
            "1, 2, 3):") in out
    assert "#   train.batch_size=4 optim.lr=3e-5 train.epochs=3   3 runs" in out
    names = _listed_runs(out)
    # a grid point's seeds are neighbours, each folder named for its point and seed
    assert names[:4] == ["barto__mlsum__batch_size-4_lr-3e-5_epochs-3_seed-1",
                         "barto__mlsum__batch_size-4_lr-3e-5_epochs-3_seed-2",
                         "barto__mlsum__batch_size-4_lr-3e-5_epochs-3_seed-3",
                         "barto__mlsum__batch_size-4_lr-3e-5_epochs-6_seed-1"]
    assert names[-3:] == [f"barto__wmt13-en-es__batch_size-384_seed-{seed}" for seed in (1, 2, 3)]
    assert len(set(names)) == 39
    assert not (tmp_path / "sweep").exists()
    # every run trains with its folder's seed
    plan = plan_sweep(tmp_path / "plan", [("barto", "wmt13-en-es")], None, [],
                      seeds=["1", "2", "3"])
    assert [run.grid_point for run in plan.runs] == [
        {"train.batch_size": "384", "train.seed": seed} for seed in ("1", "2", "3")]
    assert [plan.configs[run.name].train.seed for run in plan.runs] == [1, 2, 3]
    assert plan.grid["train.seed"] == ["1", "2", "3"]


def test_no_grid_with_seeds_is_one_run_per_seed(tmp_path, capsys):
    assert slurm_main(_sweep(tmp_path, "--pair", "t5s:mlsum", "--no-grid", "--seeds",
                             "7, 03")) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-1%2" in out
    assert _listed_runs(out) == ["t5s__mlsum__seed-7", "t5s__mlsum__seed-3"]  # as given, 03 = 3
    plan = plan_sweep(tmp_path / "plan", [("t5s", "mlsum")], {}, [], seeds=["7", "3"])
    assert [run.grid_point for run in plan.runs] == [{"train.seed": "7"}, {"train.seed": "3"}]
    assert plan.runs[0].argv[-2:] == ["--train.seed", "7"]


def test_seeds_of_duplicate_grid_points_are_dropped_seed_by_seed(tmp_path):
    plan = plan_sweep(tmp_path, [("barto", "mlsum")], {"train.epochs": ["3", "6"]},
                      ["--train.max_steps", "10"], seeds=["1", "2"])
    assert [run.name for run in plan.runs] == ["barto__mlsum__epochs-3_seed-1",
                                               "barto__mlsum__epochs-3_seed-2"]
    assert [drop.describe() for drop in plan.dropped] == [
        "barto mlsum g2 = g1, seed 1 (train.epochs does not apply: train.max_steps=10)",
        "barto mlsum g2 = g1, seed 2 (train.epochs does not apply: train.max_steps=10)"]


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "1,2,1"], "seed 1 is given twice in '1,2,1'"),
    (["--seeds", "1,01"], "seed 1 is given twice in '1,01'"),
    (["--seeds", "1,2.5"], "'2.5' is not an integer; give integers such as --seeds 1,2,3"),
    (["--seeds", "one"], "'one' is not an integer"),
    (["--seeds", "1,,2"], "empty value in '1,,2'"),
    (["--seeds=-1"], f"-1 is outside [0, {SEED_MAX}], the values train.seed takes"),
    (["--seeds", str(SEED_MAX + 1)], f"{SEED_MAX + 1} is outside [0, {SEED_MAX}]"),
    (["--grid", "train.seed=1,2", "--seeds", "3,4"],
     "--grid train.seed=1,2 and --seeds both give the seeds; give one"),
    (["--seeds", "1,2", "--", "--train.seed", "5"],
     "--train.seed after -- would train every run with one seed"),
    (["--seeds", "1,2", "--", "--train.seed=5"],
     "--train.seed after -- would train every run with one seed"),
])
def test_seed_refusals_name_the_flag(tmp_path, capsys, extra, message):
    assert slurm_main(_sweep(tmp_path, "--pair", "barto:mlsum", *extra)) == 2
    err = capsys.readouterr().err
    assert "argument --seeds: " in err and message in err, err
    assert not (tmp_path / "sweep").exists()


def test_the_planner_refuses_a_second_source_of_seeds_too(tmp_path):
    assert parse_seeds(str(SEED_MAX)) == [str(SEED_MAX)] and parse_seeds("0") == ["0"]
    with pytest.raises(ConfigError) as info:
        plan_sweep(tmp_path, [("barto", "mlsum")], {"train.seed": ["1"]}, [], seeds=["2"])
    assert info.value.key == "--seeds"


def test_the_manifest_records_the_seeds_and_old_manifests_still_load(tmp_path):
    runs = plan_sweep(tmp_path, [("barto", "mlsum")], {}, [], seeds=["1", "2"]).runs
    manifest = new_manifest("sweep", runs, {"train.seed": ["1", "2"]}, SlurmConfig(),
                            tmp_path / "slurm", PROBE, [], 2, seeds=["1", "2"])
    manifest.write(tmp_path / SWEEP_MANIFEST)
    assert json.loads((tmp_path / SWEEP_MANIFEST).read_text())["seeds"] == [1, 2]
    assert load_manifest(tmp_path).seeds == [1, 2]
    # a sweep without seeds writes no such field (older versions read it), and one written
    # before the field existed loads with none
    plain = new_manifest("sweep", runs[:1], {}, SlurmConfig(), tmp_path / "slurm", PROBE, [], 2)
    data = json.loads(plain.to_json())
    assert "seeds" not in data
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / SWEEP_MANIFEST).write_text(json.dumps(data))
    assert load_manifest(tmp_path / "old").seeds == []


# ---- collect ---------------------------------------------------------------------------------

def _seeded_sweep(sweep_dir, grid=LR, seeds=("1", "2", "3"), pairs=(("barto", "mlsum"),)):
    runs = plan_sweep(sweep_dir, list(pairs), grid, [], seeds=list(seeds)).runs
    manifest = new_manifest("sweep", runs, grid, SlurmConfig(), sweep_dir / "slurm", PROBE, [],
                            2, seeds=list(seeds))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest.write(sweep_dir / SWEEP_MANIFEST)
    folders = {}
    for run in runs:
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
        folders[(run.grid_point.get("optim.lr"), run.grid_point["train.seed"])] = \
            Path(run.run_dir)
    return folders


def _final(run_dir, validation, test, best_step=40):
    model, task = run_dir.name.split("__")[:2]
    (run_dir / "final_results.json").write_text(json.dumps({
        "task": task, "model": model, "main_metric": "rougeL", "best_step": best_step,
        "steps": 50, "validation": validation, "test": test}))


def _rows(out):
    """{model: cells} of the one markdown table in out, and its header."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {cells[0]: cells for cells in
            ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:])}
    return header, rows


def _sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def test_the_grid_point_of_the_best_mean_is_chosen_not_the_luckiest_seed(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    runs = _seeded_sweep(sweep_dir)
    # lr 3e-5: steady (dev rougeL 25.0, 25.5, 24.5; mean 25.0); lr 5e-5: one lucky seed (27.0,
    # the best single run) but a lower mean (27.0, 22.0, 23.0; mean 24.0)
    dev = {("3e-5", "1"): 25.0, ("3e-5", "2"): 25.5, ("3e-5", "3"): 24.5,
           ("5e-5", "1"): 27.0, ("5e-5", "2"): 22.0, ("5e-5", "3"): 23.0}
    test = {("3e-5", "1"): 24.0, ("3e-5", "2"): 24.2, ("3e-5", "3"): 23.1,
            ("5e-5", "1"): 26.0, ("5e-5", "2"): 21.0, ("5e-5", "3"): 22.0}
    for key, folder in runs.items():
        _final(folder, {"loss": 2.0, "rouge1": dev[key] + 5, "rouge2": dev[key] - 15,
                        "rougeL": dev[key]},
               {"rouge1": test[key] + 5, "rouge2": test[key] - 15, "rougeL": test[key]},
               best_step={"1": 30, "2": 40, "3": 50}[key[1]])
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    header, rows = _rows(out)
    assert header == ["model", "mlsum run", "mlsum rouge1", "mlsum rouge2", "mlsum rougeL",
                      "avg ROUGE"]
    chosen = [("3e-5", seed) for seed in ("1", "2", "3")]
    dev_l, test_l = [dev[key] for key in chosen], [test[key] for key in chosen]
    test_mean, test_std = sum(test_l) / 3, _sample_std(test_l)
    assert (round(test_mean, 2), round(test_std, 2)) == (23.77, 0.59)  # by hand
    assert rows["BARTO"][1] == "g1"
    assert rows["BARTO"][4] == f"25.00 ± 0.50 / {test_mean:.2f} ± {test_std:.2f}"
    assert rows["BARTO"][2] == f"30.00 ± 0.50 / {test_mean + 5:.2f} ± {test_std:.2f}"
    # the family average averages the grid point's means: (R1 + R2 + RL) / 3
    assert rows["BARTO"][5] == f"{(30 + 10 + 25) / 3:.2f} / {(3 * test_mean - 10) / 3:.2f}"
    assert ("mean of 3 seeds (train.seed 1, 2, 3; sweep --seeds) ± their sample standard "
            "deviation (n-1") in out
    assert "the grid point with the best mean dev (validation) score over its seeds" in out
    assert "- g1: optim.lr=3e-5 (seeds 1, 2, 3)" in out
    assert "- g2: optim.lr=5e-5 (seeds 1, 2, 3)" in out
    assert "Results of 6 of the 6 run(s)" in out

    rows_csv = list(csv.DictReader(io.StringIO((sweep_dir / "results.csv").read_text())))
    assert tuple(rows_csv[0]) == CSV_COLUMNS + SEED_CSV_COLUMNS
    rouge_l = next(row for row in rows_csv if row["metric"] == "rougeL")
    assert float(rouge_l["dev"]) == pytest.approx(25.0)
    assert float(rouge_l["dev_std"]) == pytest.approx(_sample_std(dev_l))
    assert float(rouge_l["test"]) == pytest.approx(test_mean)
    assert float(rouge_l["test_std"]) == pytest.approx(test_std)
    assert (rouge_l["dev_n"], rouge_l["test_n"], rouge_l["seeds"]) == ("3", "3", "1;2;3")
    assert rouge_l["grid_point"] == "optim.lr=3e-5" and rouge_l["best_step"] == "30;40;50"
    assert rouge_l["run_dir"].split(";") == [str(runs[key]) for key in chosen]
    average = next(row for row in rows_csv if row["task"] == "avg:mlsum")
    assert float(average["dev"]) == pytest.approx((30 + 10 + 25) / 3)
    assert average["dev_std"] == "" and average["seeds"] == ""


def test_a_seed_without_scores_is_remarked_and_the_means_are_over_the_others(tmp_path):
    sweep_dir = tmp_path / "sweep"
    runs = _seeded_sweep(sweep_dir, grid={"optim.lr": ["3e-5"]})
    _final(runs[("3e-5", "1")], {"rougeL": 20.0}, {"rougeL": 19.0})
    _final(runs[("3e-5", "2")], {"rougeL": 23.0}, None)  # finished without test scores
    # seed 3 has written nothing yet
    table = build_table(load_manifest(sweep_dir))
    out = format_markdown(table)
    _, rows = _rows(out)
    std = _sample_std([20.0, 23.0])
    assert rows["BARTO"][2] == f"21.50 ± {std:.2f} / 19.00"  # one test value: no spread
    assert ("- barto / mlsum: barto__mlsum__lr-3e-5 (seeds 1, 2, 3): the means are over "
            "seeds 1, 2; seed 3 has no scores yet (barto__mlsum__lr-3e-5_seed-3)") in out
    assert ("- barto / mlsum: barto__mlsum__lr-3e-5 (seeds 1, 2, 3): seed 2 has no test "
            "scores: those test means are over the other seeds") in out
    assert rows["BARTO"][1] == "g1*"  # a seed has not finished: not final
    assert "No scores yet (" in out and out.rstrip().endswith("barto__mlsum__lr-3e-5_seed-3")
    spread = table.chosen[("barto", "mlsum")].result.spread
    assert (spread.dev_n["rougeL"], spread.test_n["rougeL"]) == (2, 1)
    # a seed still training counts with its best evaluation so far, and is said to
    (runs[("3e-5", "3")] / "metrics.jsonl").write_text(
        json.dumps({"step": 20, "eval/rougeL": 26.0}) + "\n")
    out = format_markdown(build_table(load_manifest(sweep_dir)))
    assert f"| 23.00 ± {_sample_std([20.0, 23.0, 26.0]):.2f} / 19.00 |" in out
    assert "seeds 1, 2, 3): seed 3 not finished: its best evaluation so far counts" in out


def test_a_sweep_without_seeds_keeps_its_table(tmp_path):
    sweep_dir = tmp_path / "sweep"
    runs = plan_sweep(sweep_dir, [("barto", "mlsum")], LR, []).runs
    manifest = new_manifest("sweep", runs, LR, SlurmConfig(), sweep_dir / "slurm", PROBE, [], 2)
    for run in runs:
        Path(run.run_dir).mkdir(parents=True)
        _final(Path(run.run_dir), {"rougeL": 20.0}, {"rougeL": 19.0})
    out = format_markdown(build_table(manifest))
    assert "± " not in out and "Seeds:" not in out and "(seeds " not in out
    assert "| BARTO | g1 | 20.00 / 19.00 | 20.00 / 19.00 |" in out


def _local_run(folder, lr, seed, rouge_l):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"model:\n  name: barto\ndata:\n  task: mlsum\noptim:\n  lr: {lr}\n"
        f"train:\n  seed: {seed}\n  output_dir: {folder}\n")
    (folder / "final_results.json").write_text(json.dumps({
        "task": "mlsum", "model": "barto", "main_metric": "rougeL", "best_step": 8,
        "validation": {"rougeL": rouge_l}, "test": {"rougeL": rouge_l - 1}}))


def test_run_folders_that_differ_only_in_their_seed_are_averaged(tmp_path, capsys):
    runs = tmp_path / "runs"
    _local_run(runs / "a-1", 3e-5, 1, 20.0)
    _local_run(runs / "a-2", 3e-5, 2, 22.0)
    _local_run(runs / "b-1", 5e-5, 1, 23.0)  # the best single run
    _local_run(runs / "b-2", 5e-5, 2, 17.0)
    assert slurm_main(["collect", str(runs)]) == 0
    out = capsys.readouterr().out
    _, rows = _rows(out)
    assert rows["BARTO"][:3] == ["BARTO", "g1", f"21.00 ± {_sample_std([20.0, 22.0]):.2f} / "
                                                f"20.00 ± {_sample_std([19.0, 21.0]):.2f}"]
    assert "- g1: run=a-1,a-2 optim.lr=3e-05 (seeds 1, 2)" in out
    assert "mean of 2 seeds (train.seed 1, 2)" in out


# ---- status and resume -----------------------------------------------------------------------

def test_status_and_resume_of_a_seeded_sweep(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    runs = plan_sweep(sweep_dir, [("barto", "mlsum")], {}, ["--train.max_steps", "10"],
                      seeds=["1", "2"]).runs
    manifest = new_manifest("sweep", runs, {"train.seed": ["1", "2"]}, SlurmConfig(),
                            sweep_dir / "slurm", DEFAULT_ENTRY, ["--train.max_steps", "10"], 2,
                            seeds=["1", "2"])
    manifest.submitted = True
    for run in runs:
        run.job_id = "999991"  # a job SLURM no longer knows
        Path(run.run_dir).mkdir(parents=True)
    (Path(runs[0].run_dir) / "DONE").write_text("")
    manifest.write(sweep_dir / SWEEP_MANIFEST)

    assert slurm_main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{sweep_dir / SWEEP_MANIFEST}: 2 run(s) (2 seeds per grid point: "
                          "train.seed 1, 2)")
    assert "barto__mlsum__seed-2" in out

    assert slurm_main(["resume", str(sweep_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# 1 of 2 run(s) to resume:" in out and "#   barto__mlsum__seed-2 (last job" in out
    assert load_manifest(sweep_dir).seeds == [1, 2]
    # a resumed run keeps its seed: another one is another run of the grid point
    assert slurm_main(["resume", str(sweep_dir), "--dry-run", "--", "--train.seed", "5"]) == 2
    assert ("config key 'train.seed': run barto__mlsum__seed-2 is seed 2 of its grid point"
            in capsys.readouterr().err)


def test_a_metric_only_some_seeds_logged_is_averaged_over_those_seeds(tmp_path):
    # Divided by every seed, a ROUGE of 40 logged by one of two seeds showed as 20: the
    # seed mean must be over the seeds that have the metric (as the remark says).
    from seq2seq_es.slurm.results_table import _seed_statistics

    means, stds, counts = _seed_statistics([{"rougeL": 40.0, "loss": 1.0}, {"loss": 2.0}])
    assert means == {"rougeL": 40.0, "loss": 1.5}
    assert counts == {"rougeL": 1, "loss": 2}
    assert stds["rougeL"] is None and stds["loss"] == pytest.approx(_sample_std([1.0, 2.0]))

    sweep_dir = tmp_path / "sweep"
    runs = _seeded_sweep(sweep_dir, grid={"optim.lr": ["3e-5"]}, seeds=("1", "2"))
    _final(runs[("3e-5", "1")], {"rougeL": 40.0, "loss": 1.0}, {"rougeL": 38.0})
    _final(runs[("3e-5", "2")], {"loss": 2.0}, {"rougeL": 36.0})
    result = build_table(load_manifest(sweep_dir)).chosen[("barto", "mlsum")].result
    assert result.validation == {"rougeL": 40.0, "loss": 1.5}
    assert result.test == {"rougeL": 37.0}
    assert result.spread.dev_n == {"rougeL": 1, "loss": 2}
