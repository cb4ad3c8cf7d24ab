"""Evaluation runs without autograd: no tensor of its forward passes requires grad.

In-process on barto-tiny with a single-process DistEnv (no process group): the model is in
training mode with trainable parameters, as the trainer hands it over, and a forward hook on
every module records whether grad mode was on and whether any output tensor requires grad,
for the loss forward and for every generate step. The undecorated function is run as well, to
show that the hooks would see a graph if `evaluate` did not turn autograd off.
"""

from __future__ import annotations

import pytest
import torch

from engine_runs import demo_files
from seq2seq_es.config import compose
from seq2seq_es.engine.builders import get_collator, get_generation_config, get_model, get_split
from seq2seq_es.engine.distributed import DistEnv
from seq2seq_es.engine.evaluation import evaluate
from seq2seq_es.tasks import get_task


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):  # transformers' ModelOutput is a dict
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_no_grad")
    files = demo_files(folder / "data", train_size=4)  # validation: 5 examples
    cfg = compose(task="mlsum", model="barto-tiny", overrides={
        "data.train_file": files["train"], "data.validation_file": files["validation"],
        "data.cache_dir": str(folder / "cache"), "data.max_source_length": "64",
        "data.max_target_length": "32", "gen.num_beams": "2", "gen.max_new_tokens": "4",
        "gen.min_new_tokens": "0", "train.precision": "fp32"})
    model, tokenizer, spec = get_model(cfg)
    task = get_task("mlsum")
    data = get_split(cfg, task, tokenizer, model, "validation", None, lambda message: None)
    kwargs = dict(tokenized=data.tokenized, examples=data.examples,
                  collator=get_collator(cfg, spec, tokenizer, model), tokenizer=tokenizer,
                  generation_config=get_generation_config(cfg, spec, tokenizer), task=task,
                  env=DistEnv(0, 1, 0, "127.0.0.1", 0, "none"), batch_size=2, zero_stage=0,
                  bf16=False, step=0, out_dir=None)
    return model, kwargs


def _record_forwards(model, run) -> tuple[list[tuple[str, bool, bool]], object]:
    """(module, grad mode on, an output requires grad) for every module call during `run`."""
    calls = []

    def hook(module, inputs, output):
        calls.append((type(module).__name__, torch.is_grad_enabled(),
                      any(t.requires_grad for t in _tensors(output))))

    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    return calls, result


def test_evaluate_forward_requires_no_grad(setup):
    model, kwargs = setup
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    calls, results = _record_forwards(model, lambda: evaluate(model, **kwargs))
    assert {"eval/loss", "eval/rougeL"} <= set(results)
    # The loss forward (one top-level call per batch of 2: 3 batches) and the generate steps.
    top_level = [c for c in calls if c[0] == type(model).__name__]
    assert len(top_level) > 3
    assert not any(grad_mode for _, grad_mode, _ in calls), "a forward ran with grad mode on"
    assert not any(requires for _, _, requires in calls), "a forward output requires grad"
    assert model.training and torch.is_grad_enabled()  # the caller's state is back


def test_the_hooks_would_see_a_graph_without_no_grad(setup):
    """The same evaluation without its @torch.no_grad(): the loss forward builds a graph,
    so the assertions above are not vacuous."""
    model, kwargs = setup
    undecorated = evaluate.__wrapped__
    calls, _ = _record_forwards(model, lambda: undecorated(model, **kwargs))
    assert any(requires for _, _, requires in calls)
