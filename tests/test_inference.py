"""`seq2seq-es evaluate` and `seq2seq-es predict` on a tiny trained run: a run folder, its final/
model and its DeepSpeed checkpoints; validation and test; one process in-process and two
processes under torchrun with ZeRO-3; jsonl and plain-text input; the QA prompt; bad input.

One short run (t5s-tiny, 4 steps, validated and saved at steps 2 and 4) is trained per module;
its own logged evaluations are the reference the commands must reproduce.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine_runs import REPO, _env, base_args, demo_files, free_port, run
from seq2seq_es import metrics_log
from seq2seq_es.cli import main as cli
from seq2seq_es.demo.synthetic import write_demo_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("inference")


@pytest.fixture(scope="module")
def files(workdir):
    files = demo_files(workdir / "data", train_size=16)  # validation: 5 examples (odd)
    # A test split of 7 other articles (another seed): odd as well, and not the validation set.
    files["test"] = write_demo_dataset(workdir / "test_data", train_size=0, validation_size=7,
                                       seed=5)["test"]
    return files


@pytest.fixture(scope="module")
def trained(workdir, files):
    """4 steps; validated and checkpointed at steps 2 and 4; final/ = the best of the two.

    t5s-tiny: its predictions differ from example to example (barto-tiny's barely do at this
    stage), so that a mix-up of the order would show.
    """
    out = workdir / "run"
    run("none", 1, base_args(files, out, model="t5s-tiny", steps=4, batch=2, extra=[
        "--train.eval_every", "2", "--train.save_every", "2", "--train.eval_at_end", "true",
        "--train.save_every_min", "0", "--train.eval_test", "false",
        # A few tokens at least, so that predictions are not all empty.
        "--gen.min_new_tokens", "3"]))
    return out


def logged_evals(run_dir: Path) -> dict[int, dict]:
    return metrics_log.by_step(run_dir, "eval/loss")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-8)


def launch(launcher: str, args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """torchrun on the package's CLI module, or accelerate launch (ZeRO-3 config) on the thin
    script launch/inference.py."""
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), "-m", "seq2seq_es.cli", *args]
    else:
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "zero3.yaml"), "--num_processes", str(nproc),
               "--main_process_port", str(free_port()), str(REPO / "launch" / "inference.py"),
               *args]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def validation_final(trained):
    """`seq2seq-es evaluate RUN --split validation`, in this process."""
    metrics_before = (trained / "metrics.jsonl").read_bytes()
    assert cli(["evaluate", str(trained), "--split", "validation"]) == 0
    assert (trained / "metrics.jsonl").read_bytes() == metrics_before, \
        "evaluate must not append to the training's metrics.jsonl"
    return trained / "evaluations" / "validation_final"


def test_evaluate_run_matches_the_training_evaluation(trained, validation_final):
    scores = json.loads((validation_final / "scores.json").read_text())
    evals = logged_evals(trained)
    assert set(evals) == {2, 4}
    # final/ holds the weights of one of the evaluated steps (the best): same loss, same scores
    # and the same predictions as the training's own evaluation at that step.
    step = next(s for s, r in evals.items() if close(r["eval/loss"], scores["eval/loss"]))
    for key, value in scores.items():
        assert close(value, evals[step][key]), (key, value, evals[step][key])
    ours = read_jsonl(validation_final / "predictions.jsonl")
    theirs = read_jsonl(trained / "eval" / f"step_{step:08d}" / "predictions.jsonl")
    assert ours == theirs
    assert len(ours) == 5 and len({r["prediction"] for r in ours}) > 1
    info = json.loads((validation_final / "evaluation.json").read_text())
    assert info["split"] == "validation" and info["examples"] == 5


def test_evaluate_records_the_batch_size_it_ran_with(trained, validation_final, tmp_path):
    assert json.loads((validation_final / "evaluation.json").read_text())["batch_size"] == 2
    out = tmp_path / "batch_one"
    assert cli(["evaluate", str(trained), "--split", "validation", "--batch-size", "1",
                "--output-dir", str(out)]) == 0
    info = json.loads((out / "evaluation.json").read_text())
    assert info["batch_size"] == 1 and info["examples"] == 5
    # the same model and examples, batched otherwise: the same validation loss
    assert close(info["results"]["eval/loss"],
                 json.loads((validation_final / "scores.json").read_text())["eval/loss"],
                 rel=1e-4)


def test_evaluate_says_when_it_replaces_other_settings(trained, validation_final, tmp_path,
                                                       capsys):
    """Evaluating again into the same folder replaces it; with other scoring settings (here
    beams) the earlier one is named before it goes. Same settings, another batch size or ZeRO
    stage: nothing to say."""
    out = tmp_path / "again"
    shutil.copytree(validation_final, out)
    capsys.readouterr()
    assert cli(["evaluate", str(trained), "--split", "validation", "--batch-size", "1",
                "--output-dir", str(out)]) == 0
    assert "note:" not in capsys.readouterr().err
    assert cli(["evaluate", str(trained), "--split", "validation", "--output-dir", str(out),
                "--gen.num_beams", "2"]) == 0
    err = capsys.readouterr().err
    assert f"note: {out} holds an evaluation of {trained / 'final'} (validation split) with " \
           "no overrides; this one replaces it (give another --output-dir to keep both)" \
        in err, err
    info = json.loads((out / "evaluation.json").read_text())
    assert info["overrides"] == {"gen.num_beams": "2"}
    # the decoding and lengths that scored, whatever set them (only overrides were recorded)
    assert info["generation"]["num_beams"] == 2 and "max_new_tokens" in info["generation"]
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert info["lengths"] == {key: config["data"][key]
                               for key in ("max_source_length", "max_target_length")}
    # a key it does not read is named, not taken in silence
    assert cli(["evaluate", str(trained), "--split", "validation", "--output-dir", str(out),
                "--gen.num_beams", "2", "--optim.lr", "5"]) == 0
    assert "note: not read by evaluate: --optim.lr (training only)" in capsys.readouterr().err


def test_the_replaced_evaluation_note_weighs_the_split_and_not_the_batch_size(tmp_path):
    from seq2seq_es.engine.inference import note_replaced_evaluation

    said = []
    (tmp_path / "evaluation.json").write_text(json.dumps({
        "checkpoint": "/r/final", "split": "validation", "overrides": {}}))
    note_replaced_evaluation(tmp_path, Path("/r/final"), "validation",
                             {"train.eval_batch_size": "4", "dist.zero_stage": "3"},
                             said.append, chosen_dir=False)
    assert said == []  # how the work is spread changes no score
    note_replaced_evaluation(tmp_path, Path("/r/final"), "test", {}, said.append,
                             chosen_dir=False)
    assert said == [f"note: {tmp_path} holds an evaluation of /r/final (validation split) with "
                    "no overrides; this one replaces it (pass --output-dir DIR to keep both)"]


def test_evaluate_deepspeed_checkpoints(trained, validation_final):
    """Each step_N folder gives that step's logged scores: its weights replace the model's."""
    evals = logged_evals(trained)
    assert not close(evals[2]["eval/loss"], evals[4]["eval/loss"], rel=1e-4)
    for step in (2, 4):
        folder = trained / "checkpoints" / f"step_{step:08d}"
        assert cli(["evaluate", str(folder)]) == 0
        scores = json.loads((trained / "evaluations" / f"validation_{folder.name}"
                             / "scores.json").read_text())
        for key, value in scores.items():
            assert close(value, evals[step][key]), (step, key, value, evals[step][key])


def test_a_truncated_checkpoint_is_one_error_naming_the_earlier_ones(trained, workdir, capsys):
    # export, evaluate and predict of a checkpoint whose model states were cut short printed
    # torch's reader traceback ("PytorchStreamReader failed reading zip archive").
    import shutil

    copy = workdir / "damaged"
    shutil.rmtree(copy, ignore_errors=True)
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "config.yaml", copy / "config.yaml")
    for step in (2, 4):
        shutil.copytree(trained / "checkpoints" / f"step_{step:08d}",
                        copy / "checkpoints" / f"step_{step:08d}")
    newest = copy / "checkpoints" / "step_00000004"
    [states] = newest.glob("*model_states.pt")
    states.write_bytes(states.read_bytes()[:100_000])
    for argv in (["export", str(newest), str(workdir / "damaged_out")],
                 ["evaluate", str(newest)]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        [said] = [line for line in err.splitlines() if line.startswith("error:")]
        assert said.startswith(f"error: checkpoint {newest} could not be loaded (RuntimeError: ")
        assert said.endswith("it may be damaged; give an earlier one: "
                             f"{copy / 'checkpoints' / 'step_00000002'}"), err
        assert "Traceback" not in err


def test_evaluate_zero3_checkpoint_of_two_ranks_on_one_process(workdir, files):
    """A ZeRO-3 checkpoint written by 2 ranks (weights in 2 optimizer partitions) evaluated by
    one process without ZeRO: the partitions are consolidated, the logged scores come back."""
    out = workdir / "run_z3"
    run("torchrun", 2, base_args(files, out, steps=2, batch=2, extra=[
        "--dist.zero_stage", "3", "--train.eval_at_end", "true", "--train.eval_at_start", "true",
        "--train.save_every_min", "0",
        "--train.eval_test", "false", "--train.export", "false", "--gen.min_new_tokens", "3"]))
    folder = out / "checkpoints" / "step_00000002"
    assert len(list(folder.glob("zero_pp_rank_*_optim_states.pt"))) == 2
    assert cli(["evaluate", str(folder), "--dist.zero_stage", "0"]) == 0
    scores = json.loads((out / "evaluations" / "validation_step_00000002" / "scores.json")
                        .read_text())
    evals = logged_evals(out)
    # The untrained model (step 0) scores differently: the checkpoint's weights were loaded.
    assert not close(evals[0]["eval/loss"], evals[2]["eval/loss"], rel=1e-4)
    logged = evals[2]
    for key, value in scores.items():
        assert close(value, logged[key], rel=1e-4), (key, value, logged[key])


def test_evaluate_test_split(trained, files, validation_final):
    assert cli(["evaluate", str(trained), "--split", "test",
                "--data.test_file", files["test"]]) == 0
    folder = trained / "evaluations" / "test_final"
    scores = json.loads((folder / "scores.json").read_text())
    assert {"test/loss", "test/rougeL"} <= set(scores) and not any(k.startswith("eval/")
                                                                    for k in scores)
    rows = read_jsonl(folder / "predictions.jsonl")
    articles = [r["text"] for r in read_jsonl(Path(files["test"]))]
    assert [r["source"] for r in rows] == articles  # every test example, in file order


def test_evaluate_two_processes_zero3_matches_one(trained, validation_final, workdir):
    """Sharded, partitioned evaluation: same scores and predictions, no example lost or doubled
    (5 examples over 2 ranks, batches of 2: the second rank's shard is padded). Launched by
    `accelerate launch launch/inference.py evaluate`."""
    out = workdir / "eval_z3"
    # ZeRO-3 comes from accelerate's config (the run itself trained at stage 0).
    proc = launch("accelerate", ["evaluate", str(trained), "--split", "validation",
                                 "--batch-size", "2", "--output-dir", str(out)])
    assert "2 process(es), ZeRO stage 3" in proc.stderr + proc.stdout
    one = json.loads((validation_final / "scores.json").read_text())
    two = json.loads((out / "scores.json").read_text())
    assert one.keys() == two.keys()
    for key in one:
        assert close(one[key], two[key], rel=1e-4), (key, one[key], two[key])
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(validation_final
                                                               / "predictions.jsonl")
    assert json.loads((out / "evaluation.json").read_text())["world_size"] == 2


@pytest.fixture(scope="module")
def plain_input(workdir, files):
    """7 sources, one a line (odd), from the test split, in a mixed length order."""
    path = workdir / "sources.txt"
    articles = [r["text"] for r in read_jsonl(Path(files["test"]))]
    path.write_text("\n".join(articles) + "\n", encoding="utf-8")
    return path


def test_predict_jsonl_and_plain_lines(trained, files, workdir, plain_input, validation_final):
    rows = [{"source": r["text"]} for r in read_jsonl(Path(files["validation"]))]
    jsonl_in = workdir / "validation_sources.jsonl"
    jsonl_in.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")
    jsonl_out = workdir / "out" / "predictions.jsonl"
    assert cli(["predict", str(trained / "final"), "--input", str(jsonl_in),
                "--output", str(jsonl_out), "--batch-size", "2"]) == 0
    out = read_jsonl(jsonl_out)
    assert [r["source"] for r in out] == [r["source"] for r in rows]
    # The same sources, tokenized and generated as evaluation does: the same predictions.
    evaluated = read_jsonl(validation_final / "predictions.jsonl")
    assert [r["prediction"] for r in out] == [r["prediction"] for r in evaluated]
    # The run's own data file (its task's columns, no 'source'): no --task needed.
    task_out = workdir / "out" / "task_columns.jsonl"
    assert cli(["predict", str(trained / "final"), "--input", files["validation"],
                "--output", str(task_out), "--batch-size", "2"]) == 0
    assert [r["prediction"] for r in read_jsonl(task_out)] == [r["prediction"] for r in out]

    lines_out = workdir / "out" / "predictions.txt"
    assert cli(["predict", str(trained), "--input", str(plain_input), "--output",
                str(lines_out), "--gen.max_new_tokens", "4"]) == 0
    predictions = lines_out.read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 7 and all(predictions) and len(set(predictions)) > 1


def test_predict_two_processes_keeps_order(trained, plain_input, workdir):
    one, two = workdir / "one.txt", workdir / "two.txt"
    args = ["--input", str(plain_input), "--gen.max_new_tokens", "4", "--batch-size", "2"]
    assert cli(["predict", str(trained / "final"), *args, "--output", str(one)]) == 0
    launch("torchrun", ["predict", str(trained / "final"), *args, "--output", str(two),
                        "--dist.zero_stage", "3"])
    assert two.read_text(encoding="utf-8").splitlines() == \
        one.read_text(encoding="utf-8").splitlines()
    assert len(two.read_text(encoding="utf-8").splitlines()) == 7
    assert len(set(two.read_text(encoding="utf-8").splitlines())) > 1


def test_sampled_predictions_repeat_from_the_runs_seed_in_one_process_or_two(trained, plain_input,
                                                                            workdir, files):
    """gen.do_sample draws from train.seed and each batch's first example: the same file gives
    the same sampled predictions again, and in two processes (a batch holds the same rows on
    any number of ranks: sampler.eval_batches)."""
    args = ["--input", str(plain_input), "--gen.max_new_tokens", "6", "--gen.min_new_tokens", "6",
            "--batch-size", "2", "--gen.num_beams", "1"]
    sampled = ["--gen.do_sample", "true", "--gen.temperature", "3.0", "--gen.top_k", "0"]
    outputs = {name: workdir / f"sampled_{name}.txt" for name in ("greedy", "one", "again", "two")}
    assert cli(["predict", str(trained / "final"), *args, "--output", str(outputs["greedy"])]) == 0
    for name in ("one", "again"):
        assert cli(["predict", str(trained / "final"), *args, *sampled,
                    "--output", str(outputs[name])]) == 0
    launch("torchrun", ["predict", str(trained / "final"), *args, *sampled,
                        "--output", str(outputs["two"])])
    lines = {name: path.read_text(encoding="utf-8").splitlines() for name, path in outputs.items()}
    assert len(lines["one"]) == 7
    assert lines["again"] == lines["one"] and lines["two"] == lines["one"]
    assert lines["one"] != lines["greedy"]  # it sampled (temperature 3 over the whole vocabulary)
    # and what evaluate samples for the same rows: predict batched them longest first, so each
    # batch drew from another first example's seed (every prediction differed). Sources of
    # other lengths (the articles are all cut at 96 tokens, which no sort reorders).
    rows = read_jsonl(Path(files["test"]))
    for row, words in zip(rows, (5, 40, 12, 60, 3, 25, 8)):
        row["text"] = " ".join(row["text"].split()[:words])
    uneven = workdir / "uneven_test.jsonl"
    uneven.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                      encoding="utf-8")
    uneven_sources = workdir / "uneven_sources.txt"
    uneven_sources.write_text("".join(r["text"] + "\n" for r in rows), encoding="utf-8")
    args[1] = str(uneven_sources)
    assert cli(["predict", str(trained / "final"), *args, *sampled,
                "--output", str(workdir / "sampled_uneven.txt")]) == 0
    out = workdir / "sampled_evaluate"
    assert cli(["evaluate", str(trained), "--split", "test", "--data.test_file", str(uneven),
                "--output-dir", str(out), "--batch-size", "2", "--gen.max_new_tokens", "6",
                "--gen.min_new_tokens", "6", "--gen.num_beams", "1", *sampled]) == 0
    assert [r["prediction"] for r in read_jsonl(out / "predictions.jsonl")] == \
        (workdir / "sampled_uneven.txt").read_text(encoding="utf-8").splitlines()


def test_a_rounded_final_is_noted_and_an_exported_checkpoint_names_commands_that_work(
        trained, workdir, capsys, monkeypatch):
    # evaluate RUN on a bf16 final/ reproduced final_results.json only to the fourth digit and
    # said nothing; export's card said "`seq2seq-es evaluate` on this folder", which fails
    # (no run config there)
    from seq2seq_es.engine.inference import rounded_export_note

    kept = json.loads((trained / "final_results.json").read_text())["best_step"]
    assert rounded_export_note(trained, "bf16") == (
        "note: final/ holds bf16 weights (train.export_dtype); the run's own scores "
        "(final_results.json) came from its fp32 weights, which `seq2seq-es evaluate "
        f"{trained / 'checkpoints' / f'step_{kept:08d}'}` scores")
    rounded = workdir / "rounded_run"
    shutil.copytree(trained, rounded, ignore=shutil.ignore_patterns("evaluations"))
    config = rounded / "config.yaml"
    config.write_text(config.read_text().replace("export_dtype: fp32", "export_dtype: bf16"))
    capsys.readouterr()
    assert cli(["evaluate", str(rounded), "--split", "validation"]) == 0
    assert "note: final/ holds bf16 weights (train.export_dtype)" in capsys.readouterr().err

    checkpoint = trained / "checkpoints" / "step_00000002"
    exported = workdir / "exported_step_2"
    # given relative to the command's folder: the card's commands name them absolute (they
    # failed from anywhere else, and once the folder was copied)
    monkeypatch.chdir(workdir)
    assert cli(["export", str(checkpoint.relative_to(workdir)), exported.name]) == 0
    card = (exported / "README.md").read_text()
    assert (f"`seq2seq-es evaluate {checkpoint} --split test` (in its run), or `seq2seq-es "
            f"evaluate {exported} --config RUN/config.yaml --output-dir DIR --split test`") in card
    tokenizer = json.loads((exported / "tokenizer_config.json").read_text())
    assert (tokenizer["model_max_length"], tokenizer["truncation_side"]) == (96, "right")
    out = workdir / "exported_step_2_scores"
    assert cli(["evaluate", str(exported), "--config", str(trained / "config.yaml"),
                "--output-dir", str(out), "--split", "validation"]) == 0
    assert close(json.loads((out / "scores.json").read_text())["eval/loss"],
                 logged_evals(trained)[2]["eval/loss"])


def test_a_model_folder_without_its_run_config_says_whose_lengths_it_reads(
        trained, plain_input, workdir, capsys):
    # a copied final/ was read with the task's default lengths (1024 source tokens where the
    # run read 96) without a word; since, at the length its exported tokenizer cuts at
    copied = workdir / "copied_final"
    shutil.copytree(trained / "final", copied)
    args = ["predict", str(copied), "--model", "t5s-tiny", "--input", str(plain_input)]
    capsys.readouterr()
    assert cli([*args, "--output", str(workdir / "copied.txt")]) == 0
    err = capsys.readouterr().err
    assert (f"note: no run config for {copied}: data.max_source_length 96 as the exported "
            "folder says; a run's own are in its config.yaml (--config RUN/config.yaml)" in err)
    assert "cut at 96 tokens" in err
    assert cli(["predict", str(trained / "final"), "--input", str(plain_input), "--output",
                str(workdir / "with_config.txt")]) == 0
    assert "no run config" not in capsys.readouterr().err
    assert (workdir / "copied.txt").read_text() == (workdir / "with_config.txt").read_text()
    # a folder that is no export of ours (no card): the task's default, said
    (copied / "README.md").unlink()
    assert cli([*args, "--output", str(workdir / "copied_default.txt")]) == 0
    assert (f"note: no run config for {copied}: data.max_source_length 1024 is mlsum's "
            "default; a run's own are in its config.yaml (--config RUN/config.yaml)"
            in capsys.readouterr().err)
    assert cli([*args, "--output", str(workdir / "copied_96.txt"), "--max-source-length",
                "96"]) == 0
    assert "no run config" not in capsys.readouterr().err


def test_predict_formats_the_qa_prompt(trained, workdir, capsys):
    """--task sqac: rows with question and context (no answers needed) become the QA prompt."""
    rows = [{"id": "a", "question": "¿Dónde se celebró la fiesta?",
             "context": "La fiesta se celebró en Córdoba el sábado."},
            {"id": "b", "question": "¿Cuánto costó?", "context": "Costó un millón de euros.",
             "answers": {"text": ["un millón de euros"], "answer_start": [6]}},
            {"id": "c", "question": "¿Quién ganó?", "context": "Ganó la policía de Logroño."}]
    path = workdir / "qa.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    out = workdir / "qa_out.jsonl"
    assert cli(["predict", str(trained / "final"), "--input", str(path), "--output", str(out),
                "--task", "sqac", "--gen.max_new_tokens", "4"]) == 0
    got = read_jsonl(out)
    assert [r["source"] for r in got] == [
        f"question: {r['question']} context: {r['context']}" for r in rows]
    assert all(isinstance(r["prediction"], str) for r in got)
    assert "each line of" not in capsys.readouterr().err
    # A text file's lines are sources as they are: a question alone was answered without a word.
    questions = workdir / "questions.txt"
    questions.write_text("".join(r["question"] + "\n" for r in rows), encoding="utf-8")
    assert cli(["predict", str(trained / "final"), "--input", str(questions), "--output",
                str(workdir / "answers.txt"), "--task", "sqac", "--gen.max_new_tokens", "4"]) == 0
    assert (f"note: sqac: each line of {questions} is a source as it is, but sqac's "
            "sources are `question: {question} context: {context}`, from the `question` and "
            "`context` texts: write each line so, or give a .jsonl file of the task's columns"
            in capsys.readouterr().err)


def test_a_copied_export_is_read_as_its_runs_task(trained, plain_input, workdir, capsys):
    # Without --task, a copied final/ was read as the default task's (mlsum): a MIAM model's
    # dialogues cut from the wrong end, a BiSECT model's split markers left as decoded. Its
    # card's tags name the task (here rewritten to miam: what a MIAM run's export says).
    from seq2seq_es.engine.inference import exported_task, inference_config, resolve_saved
    from seq2seq_es.tasks import task_for

    copied = workdir / "copied_miam"
    shutil.copytree(trained / "final", copied)
    card = copied / "README.md"
    assert exported_task(copied) == "mlsum"
    card.write_text(card.read_text().replace("\n- mlsum\n", "\n- miam\n", 1))
    assert exported_task(copied) == "miam"
    cfg = inference_config(resolve_saved(str(copied)), model="t5s-tiny")
    assert cfg.data.task == "miam" and task_for(cfg.data).source_truncation_side == "left"
    capsys.readouterr()
    assert cli(["predict", str(copied), "--model", "t5s-tiny", "--input", str(plain_input),
                "--output", str(workdir / "copied_miam.txt")]) == 0
    err = capsys.readouterr().err
    assert f"note: {copied} was trained on miam (its README.md says)" in err
    # and a text file's lines are no dialogue: how to give one
    assert (f"note: miam: each line of {plain_input} is a source as it is" in err
            and "give a .jsonl file with a `source` field" in err)
    assert cli(["predict", str(copied), "--model", "t5s-tiny", "--task", "mlsum", "--input",
                str(plain_input), "--output", str(workdir / "copied_mlsum.txt")]) == 0
    assert "was trained on" not in capsys.readouterr().err  # --task chooses


def test_a_copied_export_is_read_as_the_model_its_card_names(trained, plain_input, workdir,
                                                               capsys):
    # Its card names the model as it names the task, yet predict asked for --model (README
    # walkthrough); a --model other than the card's is said.
    from seq2seq_es.engine.inference import inference_config, read_export_card, resolve_saved

    copied = workdir / "copied_model"
    shutil.copytree(trained / "final", copied)
    assert read_export_card(copied).model == "t5s-tiny"
    capsys.readouterr()
    assert cli(["predict", str(copied), "--input", str(plain_input), "--output",
                str(workdir / "copied_model.txt")]) == 0
    err = capsys.readouterr().err
    assert (f"note: {copied} was trained as t5s-tiny (its README.md says): read as t5s-tiny "
            "(--model chooses another)") in err
    assert len((workdir / "copied_model.txt").read_text().splitlines()) == 7
    cfg = inference_config(resolve_saved(str(copied)), model="t5s", allow_model=True)
    assert cfg.model.name == "t5s"
    assert (f"note: {copied} was trained as t5s-tiny (its README.md says), read here as t5s "
            "(--model)") in capsys.readouterr().err
    # a title naming no registry model (a card edited by hand): --model is asked for, as before
    card = copied / "README.md"
    card.write_text(card.read_text().replace("# t5s-tiny fine-tuned", "# mi-modelo fine-tuned"))
    assert read_export_card(copied).model is None
    assert cli(["predict", str(copied), "--input", str(plain_input), "--output",
                str(workdir / "copied_model2.txt")]) == 2
    assert "pass --config RUN/config.yaml or --model NAME" in capsys.readouterr().err


def test_a_copied_exports_rows_are_read_by_its_tasks_columns(trained, files, workdir):
    # The card's task was applied (note: "read as sqac's inputs"), but a .jsonl row of the
    # task's own columns was refused for want of a 'source' field unless --task was given
    # (upgrade audit): predict reads it as the run folder reads it.
    copied = workdir / "copied_rows"
    shutil.copytree(trained / "final", copied)
    rows = workdir / "copied_rows.jsonl"
    rows.write_text("".join(json.dumps({"text": row["text"], "url": row.get("url", "")},
                                       ensure_ascii=False) + "\n"
                            for row in read_jsonl(Path(files["test"]))[:2]), encoding="utf-8")
    out = workdir / "copied_rows_out.jsonl"
    assert cli(["predict", str(copied), "--model", "t5s-tiny", "--input", str(rows),
                "--output", str(out)]) == 0
    by_task = workdir / "copied_rows_task.jsonl"
    assert cli(["predict", str(copied), "--model", "t5s-tiny", "--task", "mlsum", "--input",
                str(rows), "--output", str(by_task)]) == 0
    assert out.read_text() == by_task.read_text() and len(out.read_text().splitlines()) == 2


BAD_INPUTS = {
    "not_json": ('{"source": "uno"}\n{"source": "dos"}\n{"source": tres}\n', [], 3,
                 "not valid JSON"),
    "missing_column": ('{"question": "¿Qué?", "context": "Algo."}\n{"question": "¿Cómo?"}\n',
                       ["--task", "sqac"], 2, "missing field 'context'"),
    "no_source": ('{"source": "uno"}\n{"title": "dos"}\n', [], 2,
                  "missing field 'source', and as a row of the run's task mlsum: missing field "
                  "'text'"),
    "empty_line": ('{"source": "uno"}\n\n{"source": "dos"}\n', [], 2, "empty line"),
    "not_a_string": ('{"source": 7}\n', [], 1, "not a string"),
    # a null task column beside a 'source': it said both were missing
    "null_column": ('{"source": "uno"}\n{"text": null, "source": "dos"}\n', [], 2,
                    "as a row of the run's task mlsum (its columns are read before 'source'): "
                    "field 'text' is null"),
    # json.loads kept the last of two values where training refuses the row
    "repeated_key": ('{"source": "uno", "source": "dos"}\n', [], 1,
                     "key 'source' appears twice in one object"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_names_file_and_line(trained, workdir, capsys, name):
    text, extra, line, reason = BAD_INPUTS[name]
    path = workdir / f"bad_{name}.jsonl"
    path.write_text(text, encoding="utf-8")
    out = workdir / f"bad_{name}_out.jsonl"
    assert cli(["predict", str(trained / "final"), "--input", str(path), "--output", str(out),
                *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: input file {path}, line {line}: "), err
    assert reason in err[0] and not out.exists()


def test_predict_refuses_another_model_than_the_runs(trained, plain_input, workdir, capsys):
    # --model barto-tiny on a t5s-tiny run predicted with t5s-tiny without a word (evaluate
    # refused it).
    out = workdir / "other_model.txt"
    assert cli(["predict", str(trained), "--input", str(plain_input), "--output", str(out),
                "--model", "barto-tiny"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "says t5s-tiny, not barto-tiny" in err and not out.exists()


def test_bad_plain_line_and_bad_paths(trained, workdir, capsys, monkeypatch):
    lines = workdir / "bad_lines.txt"
    lines.write_text("uno\n   \ndos\n", encoding="utf-8")
    assert cli(["predict", str(trained), "--input", str(lines), "--output",
                str(workdir / "x.txt")]) == 2
    assert f"input file {lines}, line 2: empty line" in capsys.readouterr().err

    # A JSON array or a CSV read as text lines would be scored as garbage: refused by suffix.
    array = workdir / "rows.json"
    array.write_text('[{"source": "uno"}]', encoding="utf-8")
    assert cli(["predict", str(trained), "--input", str(array), "--output",
                str(workdir / "x.txt")]) == 2
    assert "not .json; convert the file" in capsys.readouterr().err
    assert cli(["predict", str(trained), "--input", str(lines.with_name("ok.txt")), "--output",
                str(workdir / "x.csv")]) == 2
    assert "--output" in capsys.readouterr().err

    missing = workdir / "nope"
    assert cli(["evaluate", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing} does not exist"

    unfinished = workdir / "unfinished"
    (unfinished / "checkpoints" / "step_00000002").mkdir(parents=True, exist_ok=True)
    (unfinished / "config.yaml").write_text((trained / "config.yaml").read_text())
    assert cli(["evaluate", str(unfinished)]) == 2
    err = capsys.readouterr().err
    assert f"run folder {unfinished} has no final/ model" in err and "no complete checkpoint" in err
    assert cli(["evaluate", str(unfinished / "checkpoints" / "step_00000002")]) == 2
    assert "no trainer_state.json" in capsys.readouterr().err

    lonely = workdir / "lonely_model"
    lonely.mkdir(exist_ok=True)
    (lonely / "config.json").write_text((trained / "final" / "config.json").read_text())
    assert cli(["evaluate", str(lonely)]) == 2
    assert f"model folder {lonely} has config.json but no weights" in capsys.readouterr().err

    # a model folder without its tokenizer files: named as the folder given, not as a
    # config key 'model.path' the user never set
    untokenized = workdir / "untokenized"
    shutil.rmtree(untokenized, ignore_errors=True)
    untokenized.mkdir()
    shutil.copy(trained / "config.yaml", untokenized / "config.yaml")
    shutil.copytree(trained / "final", untokenized / "final")
    for path in (untokenized / "final").glob("tokenizer*"):
        path.unlink()
    assert cli(["evaluate", str(untokenized)]) == 2
    [said] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    final = untokenized / "final"
    assert said.startswith(f"error: the tokenizer loaded from {final} ") or \
        said.startswith(f"error: no usable tokenizer in {final}"), said
    # given relative to the folder the command runs in, as most are
    monkeypatch.chdir(workdir)
    assert cli(["evaluate", "untokenized"]) == 2
    [said] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "config key" not in said and str(final) in said, said


# ---------------------------------------------------------------------------------------------
# The ordered gather on two real ranks with a model whose output reveals its input.


class _EchoModel(torch.nn.Module):
    def generate(self, input_ids, attention_mask, generation_config, synced_gpus):
        return input_ids


class _Digits:
    def batch_decode(self, out, skip_special_tokens):
        return [" ".join(str(int(t)) for t in row if t != 0) for row in out]


def _echo_rank(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from seq2seq_es.data.collator import Seq2SeqCollator
    from seq2seq_es.engine.distributed import DistEnv
    from seq2seq_es.engine.evaluation import generate_texts

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    features = [{"input_ids": [i + 1] * (1 + (i * 3) % 5)} for i in range(7)]
    got = generate_texts(_EchoModel(), features=features,
                         collator=Seq2SeqCollator(pad_token_id=0, decoder_start_token_id=0),
                         tokenizer=_Digits(), generation_config=None, task=None,
                         env=DistEnv(rank, world, 0, "127.0.0.1", port, "torchrun"),
                         batch_size=2, zero_stage=0, bf16=False)
    Path(folder, f"rank_{rank}.json").write_text(json.dumps(got))
    dist.destroy_process_group()


def test_generate_texts_gathers_in_input_order_over_two_ranks(tmp_path):
    torch.multiprocessing.spawn(_echo_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    expected = [" ".join([str(i + 1)] * (1 + (i * 3) % 5)) for i in range(7)]
    assert json.loads((tmp_path / "rank_0.json").read_text()) == expected
    assert json.loads((tmp_path / "rank_1.json").read_text()) is None


def test_a_copied_folder_without_our_card_says_its_task_is_the_default(trained, plain_input,
                                                                      workdir, capsys):
    # An export of a version before the model cards (or a model from elsewhere) was read as
    # mlsum's without a word: a MIAM model's dialogues were cut from the wrong end (upgrade
    # audit).
    copied = workdir / "copied_no_card"
    shutil.copytree(trained / "final", copied)
    (copied / "README.md").unlink()
    capsys.readouterr()
    assert cli(["predict", str(copied), "--model", "t5s-tiny", "--input", str(plain_input),
                "--output", str(workdir / "no_card.txt")]) == 0
    assert (f"note: {copied} does not say which task it was trained on (no seq2seq-es model "
            "card: an export of an older version, or a model from elsewhere): read as mlsum's "
            "inputs; --task names its task") in capsys.readouterr().err
    assert cli(["predict", str(copied), "--model", "t5s-tiny", "--task", "mlsum", "--input",
                str(plain_input), "--output", str(workdir / "no_card.txt"), "--overwrite"]) == 0
    assert "does not say which task" not in capsys.readouterr().err
