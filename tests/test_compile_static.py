"""model.compile with bucketed batches (issue 12, item 2): the engine compiles every bucket shape
before training (ZeRO 0), nothing compiles during training or evaluation, and the warm-up leaves
the run's randomness alone, so the compiled run trains exactly like the eager one.

The backend is Dynamo's `eager` (model.compile_backend): the graphs and recompilations are
Dynamo's own, which is what these tests are about, without inductor's code generation time.
"""

from __future__ import annotations

import pytest
import torch

from engine_runs import demo_files, step_losses
from seq2seq_es.config import RunConfig, validate
from seq2seq_es.engine.trainer import Trainer
from seq2seq_es.errors import ConfigError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("compile") / "data", train_size=40)



def _config(files, out, compile: bool) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    cfg.data.train_file, cfg.data.validation_file = files["train"], files["validation"]
    cfg.data.max_source_length, cfg.data.max_target_length = 128, 48
    cfg.train.batching, cfg.train.max_tokens, cfg.train.length_buckets = "bucketed", 700, 6
    cfg.train.output_dir, cfg.train.epochs = str(out), 1
    cfg.train.precision, cfg.train.log_every, cfg.train.keep_last = "fp32", 1, 2
    cfg.train.eval_per_epoch, cfg.train.eval_at_end, cfg.train.export = False, True, False
    cfg.train.report_to, cfg.train.progress_bar = "none", False
    cfg.model.dropout = 0.1           # the warm-up must not draw from the dropout RNG
    cfg.model.compile, cfg.model.compile_backend = compile, "eager"
    cfg.optim.warmup_steps = 1
    cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens = 1, 6, 0
    return cfg


@pytest.mark.slow
def test_a_compiled_bucketed_run_compiles_its_shapes_first_and_trains_like_eager(
        files, one_rank, tmp_path, capsys):
    import torch._dynamo
    from torch._dynamo.utils import counters

    with Trainer(_config(files, tmp_path / "eager", compile=False)) as trainer:
        trainer.train()
    eager = step_losses(tmp_path / "eager")

    torch._dynamo.reset()
    counters.clear()
    try:
        with Trainer(_config(files, tmp_path / "compiled", compile=True)) as trainer:
            shapes = trainer.plan.shapes()
            assert len(shapes) > 1
            warmed = counters["stats"]["unique_graphs"]
            assert warmed == len(shapes)      # one static graph per bucket shape, before step 1
            trainer.train()
            # Neither a training step nor the validation (loss and generation) compiled more.
            assert counters["stats"]["unique_graphs"] == warmed
    finally:
        torch._dynamo.reset()
    assert f"compiled {len(shapes)} batch shapes before training" in capsys.readouterr().out
    compiled = step_losses(tmp_path / "compiled")
    assert sorted(compiled) == sorted(eager) and len(eager) > 2
    assert compiled == pytest.approx(eager, rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_a_compiled_run_on_sdpa_keeps_full_batches_masks_and_compiles_nothing_more(
        files, one_rank, tmp_path):
    """model.attention sdpa drops the mask of a batch without source padding (read_free_masks),
    which under model.compile gave each shape a second graph during training: every source is
    cut at 40 tokens here, so every batch is full, while the warm-up's dummy batches are
    padded. Compiled, the step keeps the mask."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    cfg = _config(files, tmp_path / "sdpa", compile=True)
    cfg.model.attention, cfg.data.max_source_length = "sdpa", 40
    torch._dynamo.reset()
    counters.clear()
    try:
        with Trainer(cfg) as trainer:
            warmed = counters["stats"]["unique_graphs"]
            assert warmed == len(trainer.plan.shapes())
            trainer.train()
            assert counters["stats"]["unique_graphs"] == warmed
    finally:
        torch._dynamo.reset()


def test_static_shapes_need_batches_of_few_shapes():
    cfg = RunConfig()
    cfg.model.compile, cfg.train.max_tokens = True, 1000
    cfg.model.compile_shapes = "static"
    for batching in ("fixed", "token_budget"):
        cfg.train.batching = batching
        with pytest.raises(ConfigError, match="model.compile_shapes") as caught:
            validate(cfg)
        assert "bucketed" in str(caught.value)
    for batching in ("bucketed", "packed"):
        cfg.train.batching = batching
        validate(cfg)
    cfg.train.batching, cfg.model.compile_shapes = "token_budget", "dynamic"
    validate(cfg)


def test_auto_shapes_are_static_only_for_batches_of_few_shapes():
    from seq2seq_es.engine.builders import compile_shapes

    cfg = RunConfig()
    cfg.model.compile = True
    assert cfg.model.compile_shapes == "auto"
    expected = {"bucketed": "static", "packed": "static", "fixed": "auto",
                "token_budget": "auto"}
    for batching, shapes in expected.items():
        cfg.train.batching = batching
        assert compile_shapes(cfg) == shapes, batching
    cfg.model.compile_shapes = "dynamic"
    assert compile_shapes(cfg) == "dynamic"


def test_compile_mode_reaches_torch_compile_and_is_refused_where_it_cannot_work():
    from seq2seq_es.config import not_applying
    from seq2seq_es.engine.builders import compile_kwargs

    cfg = RunConfig()
    cfg.train.max_tokens = 1000
    assert "model.compile_mode" in not_applying(cfg)         # model.compile is off
    cfg.model.compile, cfg.train.batching = True, "bucketed"
    assert compile_kwargs(cfg) == {"dynamic": False}
    cfg.model.compile_mode = "reduce-overhead"
    validate(cfg)
    assert "model.compile_mode" not in not_applying(cfg)
    assert compile_kwargs(cfg) == {"dynamic": False, "mode": "reduce-overhead"}
    cfg.train.batching = "fixed"
    assert compile_kwargs(cfg) == {"mode": "reduce-overhead"}
    # a CUDA graph per batch shape: token-budget batches make a new shape every micro-batch
    cfg.train.batching = "token_budget"
    with pytest.raises(ConfigError, match="model.compile_mode") as caught:
        validate(cfg)
    assert "bucketed or packed" in str(caught.value)
    cfg.train.batching, cfg.dist.zero_stage = "bucketed", 3
    with pytest.raises(ConfigError, match="ZeRO-3"):
        validate(cfg)
    cfg.dist.zero_stage = 2
    validate(cfg)
    # ZeRO 1-2 accumulate the gradients that the next micro-batch's graph overwrites
    cfg.train.grad_accum = 2
    with pytest.raises(ConfigError, match=r"train.grad_accum 2\) needs dist.zero_stage 0"):
        validate(cfg)
    cfg.dist.zero_stage = 0
    validate(cfg)                       # TrainStep moves the first micro-batch's gradients out
    cfg.train.grad_accum, cfg.dist.zero_stage, cfg.model.compile_backend = 1, 2, "aot_eager"
    with pytest.raises(ConfigError, match="inductor"):   # torch would drop the mode silently
        validate(cfg)
    cfg.model.compile_mode = "max-autotune-no-cudagraphs"
    with pytest.raises(ConfigError, match="inductor"):
        validate(cfg)
    cfg.model.compile_backend = "inductor"
    validate(cfg)


class _GraphPoolGradient(torch.autograd.Function):
    """Identity whose backward hands its gradient back in one fixed piece of memory, each call
    overwriting the last, with nothing but the storage held: what a replayed CUDA graph's
    output is (cudagraph trees keep weak references only, so autograd adopts it as `.grad`)."""

    pool: torch.Tensor | None = None

    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        cls = _GraphPoolGradient
        if cls.pool is None or cls.pool.shape != grad.shape:
            cls.pool = torch.empty_like(grad)
        cls.pool.copy_(grad)
        return torch.empty(0, dtype=grad.dtype).set_(cls.pool.untyped_storage(), 0, grad.shape,
                                                     cls.pool.stride())


class _ThroughGraphPool(torch.nn.Module):
    def forward(self, weight):
        return _GraphPoolGradient.apply(weight)


@pytest.mark.parametrize("micro_batches", [2, 3])
def test_cuda_graph_gradients_are_moved_out_before_the_next_micro_batch(one_rank, tmp_path,
                                                                        micro_batches):
    """reduce-overhead with gradient accumulation: the first micro-batch's gradients, which
    autograd keeps in the graph's memory, are copied out before the second replay overwrites
    them (step.keep_grads_out_of_graph_memory). A gradient through _GraphPoolGradient stands in
    for a graph's (the CPU has no CUDA graphs): without the copy, the step trains on 2 x the
    second micro-batch's gradient of that weight instead of the sum (with three, 2 x the
    third's), and the weights differ."""
    from torch.nn.utils.parametrize import register_parametrization

    from engine_runs import demo_files as files_for, tiny_step_engine
    from seq2seq_es.engine.step import TrainStep

    data = files_for(tmp_path / "data", train_size=16)

    def trained(through_pool: bool, graph_steps: bool) -> list[torch.Tensor]:
        cfg, engine, batches = tiny_step_engine(data, one_rank, grad_accum=micro_batches,
                                                dropout=0.0)
        if through_pool:
            _GraphPoolGradient.pool = None
            register_parametrization(engine.module.model.encoder.layers[0].self_attn.q_proj,
                                     "weight", _ThroughGraphPool())
        step = TrainStep(engine, one_rank, cfg)
        step.graph_steps = step.copies_graph_grads = graph_steps   # as compile_mode would
        step(batches[:micro_batches], 0)
        # (a parametrized weight is listed as parametrizations.weight.original, after its bias)
        return {name.replace("parametrizations.weight.original", "weight"): p.detach().clone()
                for name, p in engine.module.named_parameters()}

    plain = trained(through_pool=False, graph_steps=False)
    overwritten = trained(through_pool=True, graph_steps=False)
    assert plain.keys() == overwritten.keys()
    assert [name for name in plain if not torch.equal(plain[name], overwritten[name])] == \
        ["model.encoder.layers.0.self_attn.q_proj.weight"], "the stand-in did not overwrite"
    moved_out = trained(through_pool=True, graph_steps=True)
    assert all(torch.equal(plain[name], moved_out[name]) for name in plain)


@pytest.mark.parametrize("model_name,attention,lean_ce", [
    ("barto-tiny", "hf", False), ("barto-tiny", "sdpa", True), ("t5s-tiny", "sdpa", False),
    ("t5s-tiny", "sdpa", True)])
def test_the_compiled_forward_is_one_graph(files, one_rank, model_name, attention, lean_ce):
    """What the bench's compiled rows compile (issue 12): the training forward, with the lean
    cross-entropy where they use it, traces into one graph. A graph break splits the model
    into graphs with eager code between them (and a read such as `.item()` or a row selection
    such as `nonzero` makes one: the lean loss's label selection did)."""
    import torch._dynamo

    from engine_runs import tiny_step_engine

    _, engine, batches = tiny_step_engine(files, one_rank, attention=attention,
                                          model_name=model_name, lean_ce=lean_ce)
    batch = dict(batches[0])
    labels = batch.pop("labels").clone()
    labels[0, -3:] = -100                                 # some target padding to mask
    model = engine.module
    if lean_ce:  # installed by get_engine (model.lean_ce)
        def forward(**inputs):
            return model(**inputs, lean_ce_labels=labels)
    else:
        def forward(**inputs):
            return model(**inputs, labels=labels).loss
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(forward)(**batch)
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("shapes", ["dynamic", "auto"])
def test_a_compiled_forward_with_varying_lengths_does_not_compile_again_per_token_count(
        files, one_rank, shapes):
    """model.compile + model.lean_ce on batches of varying lengths (token budget: compile_shapes
    auto is torch's own, dynamic after a first recompile): the lean loss's chunk loop counts the
    target tokens, so inside the graph every new count compiled the model again (then ran it
    eagerly past torch's recompile limit). The loss runs outside the graph there."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from seq2seq_es.engine.builders import get_collator, get_engine, get_model, get_split
    from seq2seq_es.tasks import get_task

    cfg = RunConfig()
    cfg.model.name, cfg.data.task, cfg.data.train_file = "barto-tiny", "mlsum", files["train"]
    cfg.data.max_source_length, cfg.data.max_target_length = 128, 48
    cfg.train.batching, cfg.train.max_tokens, cfg.train.precision = "token_budget", 700, "fp32"
    cfg.model.compile, cfg.model.compile_backend, cfg.model.compile_shapes = \
        True, "eager", shapes
    cfg.model.lean_ce = True
    validate(cfg)
    model, tokenizer, spec = get_model(cfg)
    split = get_split(cfg, get_task("mlsum"), tokenizer, model, "train", 40, lambda m: None)
    collate = get_collator(cfg, spec, tokenizer, model)
    torch._dynamo.reset()
    counters.clear()
    try:
        engine, *_ = get_engine(model, cfg, one_rank, total_steps=10)
        graphs, token_counts = [], set()
        for rows in ([0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15], [16, 17, 18]):
            batch = dict(collate([split.tokenized[i] for i in rows]))
            labels = batch.pop("labels")
            batch.pop("example_index", None)
            token_counts.add(labels.numel())
            engine.backward(engine(**batch, lean_ce_labels=labels))
            graphs.append(counters["stats"]["unique_graphs"])
        assert len(token_counts) >= 5          # a new target-token count (nearly) every batch
        # the first batches compile (static, then dynamic); the later ones reuse the graphs
        assert graphs[-1] == graphs[2], graphs
    finally:
        torch._dynamo.reset()
