"""best.json after a kill inside a save: Checkpointer.save renames step_N into place first and
writes best.json last, so a SIGKILL between the two leaves a complete step_N whose best (its
own step) best.json never got. The resumed run does not save step N again, so without a repair
best.json named the older best for good (other tools poll it while runs go on)."""

import json
import shutil

from engine_runs import base_args, demo_files, run


def test_a_resume_repairs_best_json_left_behind_by_a_kill_before_it(tmp_path):
    files = demo_files(tmp_path / "data")
    out = tmp_path / "run"
    # validations at steps 4 and 8 on the loss (it falls: each one is a new best)
    args = base_args(files, out, steps=8, batch=4,
                     extra=["--train.eval_every", "4", "--train.eval_generate", "false",
                            "--train.keep_last", "3", "--train.resume", "auto"])
    run("none", 1, args)
    best_file = out / "checkpoints" / "best.json"
    assert json.loads(best_file.read_text())["step"] == 8
    # The folder as a SIGKILL just before best.json's write at step 8 leaves it: step_8
    # complete, best.json still the step-4 best, the run not finished.
    note = json.loads(best_file.read_text())
    state4 = json.loads((out / "checkpoints" / "step_00000004" / "trainer_state.json")
                        .read_text())
    best_file.write_text(json.dumps({**state4["best"], "checkpoint": "step_00000004"}))
    for name in ("DONE", "final_results.json"):
        (out / name).unlink()
    shutil.rmtree(out / "final")
    proc = run("none", 1, args)
    assert "resumed from" in proc.stdout + proc.stderr
    repaired = json.loads(best_file.read_text())
    assert repaired["step"] == 8 and repaired["checkpoint"] == "step_00000008"
    assert repaired["value"] == note["value"]
    assert json.loads((out / "final_results.json").read_text())["best_step"] == 8
