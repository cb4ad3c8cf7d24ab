"""The chunked cross-entropy against the full-logits loss: values and gradients, per family."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from seq2seq_es.data.collator import Seq2SeqCollator
from seq2seq_es.engine.loss import token_ce_sum
from seq2seq_es.kernels.lean_ce import (chunked_cross_entropy_sum, decoder_hidden_states,
                                        install_lean_loss, lean_token_ce_sum, lm_head_parts,
                                        uninstall_lean_loss)

VOCAB = 211


def full_ce(hidden, weight, labels, bias=None):
    logits = hidden @ weight.T + (bias.reshape(-1) if bias is not None else 0)
    return F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=-100)


def random_problem(n=53, d=24, vocab=VOCAB, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, d, generator=gen) * 0.3).to(dtype).requires_grad_()
    bias = torch.randn(vocab, generator=gen).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[::4] = -100
    return hidden, weight, bias, labels


def grads(loss, tensors):
    return torch.autograd.grad(loss * 0.37, tensors, allow_unused=True)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_value_and_gradients_match_full_logits_in_fp32(chunk_size):
    hidden, weight, bias, labels = random_problem()
    ref = full_ce(hidden, weight, labels, bias)
    lean = chunked_cross_entropy_sum(hidden, weight, labels, bias, chunk_size=chunk_size)
    assert lean.dtype == torch.float32
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads(lean, (hidden, weight, bias)), grads(ref, (hidden, weight, bias))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_without_bias_and_with_barts_one_row_bias_buffer():
    hidden, weight, bias, labels = random_problem(seed=1)
    ref = full_ce(hidden, weight, labels)
    lean = chunked_cross_entropy_sum(hidden, weight, labels, chunk_size=16)
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-4)
    buffer = bias.detach()[None, :]           # [1, V], no gradient: BART's final_logits_bias
    ref = full_ce(hidden, weight, labels, buffer)
    lean = chunked_cross_entropy_sum(hidden, weight, labels, buffer, chunk_size=16)
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads(lean, (hidden, weight)), grads(ref, (hidden, weight))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def assert_bf16_close(got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.float(), want.float()
    assert (got - want).norm() <= 2e-2 * want.norm() + 1e-3, ((got - want).norm(), want.norm())


def test_bf16_matches_full_logits_up_to_bf16_rounding():
    hidden, weight, bias, labels = random_problem(dtype=torch.bfloat16, seed=2)
    ref = full_ce(hidden, weight, labels, bias)
    lean = chunked_cross_entropy_sum(hidden, weight, labels, bias, chunk_size=10)
    assert lean.dtype == torch.float32
    torch.testing.assert_close(lean, ref, rtol=1e-2, atol=1e-2)
    got, want = grads(lean, (hidden, weight, bias)), grads(ref, (hidden, weight, bias))
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        assert_bf16_close(g, w)


def test_under_autocast_the_matmul_runs_in_the_autocast_dtype():
    hidden, weight, bias, labels = random_problem(seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, reduction="sum")
        lean = chunked_cross_entropy_sum(hidden, weight, labels, bias, chunk_size=10)
    exact = full_ce(hidden, weight, labels, bias)
    torch.testing.assert_close(lean, ref, rtol=5e-3, atol=5e-2)
    assert lean.item() != exact.item()     # bf16 products, as the model's lm_head under autocast
    for g, w in zip(grads(lean, (hidden, weight, bias)), grads(ref, (hidden, weight, bias))):
        assert g.dtype == torch.float32     # gradients come back in the parameters' dtype
        assert_bf16_close(g, w)


def test_all_labels_ignored_gives_zero_with_zero_gradients():
    hidden, weight, bias, labels = random_problem(seed=4)
    lean = chunked_cross_entropy_sum(hidden, weight, torch.full_like(labels, -100), bias)
    assert lean.item() == 0.0
    for g in grads(lean, (hidden, weight, bias)):
        assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_on_a_device_the_loss_reads_nothing_back(smoothing):
    """On a GPU a read of a device value (an id check, the count of kept rows that a row
    selection's shape needs) makes the host wait, at every micro-batch (issue 12.1). Meta
    tensors hold no data: an op whose result depends on the values fails on them, so a loss
    and gradients computed on the meta device read nothing."""
    hidden, weight, bias, labels = (t.detach().to("meta") for t in random_problem(seed=8))
    for tensor in (hidden, weight, bias):
        tensor.requires_grad_()
    loss = chunked_cross_entropy_sum(hidden, weight, labels, bias, chunk_size=16,
                                     label_smoothing=smoothing)
    assert loss.device.type == "meta" and loss.shape == ()
    got = grads(loss, (hidden, weight, bias))
    assert [g.shape for g in got] == [hidden.shape, weight.shape, bias.shape]


class _LargestVocabTensor(TorchDispatchMode):
    """Records the most rows any [rows, V] tensor had (the transposed [d, V] weight aside)."""

    def __init__(self, vocab: int, hidden_size: int):
        super().__init__()
        self.vocab, self.hidden_size, self.most_rows = vocab, hidden_size, 0
        self.shapes_seen: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes_seen.add(tuple(t.shape))
            if isinstance(t, torch.Tensor) and t.dim() == 2 and t.size(-1) == self.vocab \
                    and t.size(0) != self.hidden_size:
                self.most_rows = max(self.most_rows, t.size(0))
        return out


def test_no_tensor_holds_more_than_a_chunk_of_logits():
    hidden, weight, bias, labels = random_problem(n=200, seed=5)
    labels[labels == -100] = 3
    watch = _LargestVocabTensor(VOCAB, hidden.size(1))
    with watch:
        loss = chunked_cross_entropy_sum(hidden, weight, labels, bias, chunk_size=16)
        loss.backward()
    assert watch.most_rows == 16
    reference = _LargestVocabTensor(VOCAB, hidden.size(1))
    with reference:
        full_ce(hidden, weight, labels, bias).backward()
    assert reference.most_rows == 200        # the watcher does see full logits where they exist


def test_under_no_grad_no_gradients_are_formed():
    hidden, weight, bias, labels = random_problem(n=40, seed=7)
    watch = _LargestVocabTensor(VOCAB, hidden.size(1))
    with torch.no_grad(), watch:
        loss = chunked_cross_entropy_sum(hidden, weight, labels, bias, chunk_size=8)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, full_ce(hidden, weight, labels, bias).detach(),
                               rtol=1e-5, atol=1e-4)
    # Only the logits chunk itself: no [V, d] weight gradient was built.
    assert watch.shapes_seen.isdisjoint({(VOCAB, hidden.size(1))})


def test_bad_shapes_and_labels_raise_clear_errors():
    hidden, weight, bias, labels = random_problem(seed=6)
    with pytest.raises(ValueError, match="labels must be -100 or in"):
        chunked_cross_entropy_sum(hidden, weight, torch.full_like(labels, VOCAB))
    with pytest.raises(ValueError, match="bias has 5 entries"):
        chunked_cross_entropy_sum(hidden, weight, labels, torch.zeros(5))
    with pytest.raises(ValueError, match="hidden"):
        chunked_cross_entropy_sum(hidden[:, :3], weight, labels)


# ---------------------------------------------------------------------------------------------
# Tiny random models of each family


def bart(kind: str = "bart"):
    from transformers import BartConfig, BartForConditionalGeneration, LEDConfig, \
        LEDForConditionalGeneration

    common = dict(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=48,
                  decoder_ffn_dim=48, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    if kind == "led":
        model = LEDForConditionalGeneration(LEDConfig(
            max_encoder_position_embeddings=64, max_decoder_position_embeddings=64,
            attention_window=[8], **common))
    else:
        model = BartForConditionalGeneration(BartConfig(max_position_embeddings=64, **common))
    with torch.no_grad():
        model.final_logits_bias.normal_()       # zero at init: make the test see it
    return model


def t5(variant: str):
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=2,
        dropout_rate=0.0, feed_forward_proj="gated-gelu" if variant == "v1.1" else "relu",
        tie_word_embeddings=variant == "original", decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1))
    if variant == "v1.1":
        # Real T5 v1.1 checkpoints load with a head of their own; a fresh model shares it.
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 3)
    return model


def bert2bert(kind: str):
    from transformers import BertConfig, EncoderDecoderConfig, RobertaConfig

    from seq2seq_es.models.sharing import Bert2BertModel

    config_class = BertConfig if kind == "bert" else RobertaConfig
    sizes = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=48, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                 max_position_embeddings=80, pad_token_id=1)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        config_class(**sizes), config_class(is_decoder=True, add_cross_attention=True, **sizes))
    model = Bert2BertModel(config=config)
    head = model.decoder.cls.predictions if kind == "bert" else model.decoder.lm_head
    with torch.no_grad():
        head.decoder.bias.normal_()
    return model


MODELS = {
    "bart": lambda: bart("bart"),
    "led": lambda: bart("led"),
    "t5-v1.1": lambda: t5("v1.1"),
    "t5-original": lambda: t5("original"),
    "bert2bert": lambda: bert2bert("bert"),
    "roberta2roberta": lambda: bert2bert("roberta"),
}


def batch_for(model, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = []
    for src_len, tgt_len in [(11, 5), (19, 9), (6, 2), (14, 7)]:
        features.append({"input_ids": torch.randint(3, VOCAB, (src_len,), generator=gen).tolist(),
                         "labels": torch.randint(3, VOCAB, (tgt_len,), generator=gen).tolist()})
    led = model.config.model_type == "led"
    collator = Seq2SeqCollator(pad_token_id=1, decoder_start_token_id=2,
                               pad_to_multiple_of=8 if led else 1,
                               global_attention="first" if led else None)
    batch = collator(features)
    batch["example_index"] = torch.arange(len(features))
    return batch


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("labels", "example_index")}


def param_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_lean_loss_equals_model_logits_loss_with_the_same_gradients(name):
    torch.manual_seed(0)
    model = MODELS[name]().train()
    batch = batch_for(model)
    labels = batch["labels"]
    assert (labels == -100).any()
    ref = token_ce_sum(model(**model_inputs(batch)).logits, labels)
    lean = lean_token_ce_sum(model, batch, labels, chunk_size=5)
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-4)
    got, want = param_grads(model, lean), param_grads(model, ref)
    assert sum(g is not None for g in want) > 5
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if w is not None:
            # fp32 sums in a different order: tolerance relative to the tensor's scale.
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * max(1.0, w.abs().max()))


@pytest.mark.parametrize("name", ["bart", "t5-v1.1"])
def test_lean_loss_in_bf16_matches_up_to_bf16_rounding(name):
    torch.manual_seed(0)
    model = MODELS[name]().to(torch.bfloat16).train()
    batch = batch_for(model, seed=1)
    ref = token_ce_sum(model(**model_inputs(batch)).logits, batch["labels"])
    lean = lean_token_ce_sum(model, batch, batch["labels"], chunk_size=6)
    torch.testing.assert_close(lean, ref, rtol=1e-2, atol=1e-1)
    for g, w in zip(param_grads(model, lean), param_grads(model, ref)):
        if w is not None:
            assert_bf16_close(g, w)


def test_head_parts_per_family():
    weight, bias, scale = lm_head_parts(MODELS["bart"]())
    assert weight.shape == (VOCAB, 32) and bias.shape == (1, VOCAB) and scale == 1.0
    original = MODELS["t5-original"]()
    weight, bias, scale = lm_head_parts(original)
    assert weight is original.shared.weight and bias is None and scale == pytest.approx(32 ** -0.5)
    v11 = MODELS["t5-v1.1"]()
    weight, bias, scale = lm_head_parts(v11)
    assert weight is v11.lm_head.weight and weight is not v11.shared.weight and scale == 1.0
    b2b = MODELS["bert2bert"]()
    weight, bias, scale = lm_head_parts(b2b)
    assert bias is b2b.decoder.cls.predictions.decoder.bias and scale == 1.0
    hidden = decoder_hidden_states(b2b, batch_for(b2b))
    assert hidden.shape == (4, 9, 32)


def test_unknown_model_type_is_named():
    from transformers import BertConfig, BertForMaskedLM

    from seq2seq_es.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="'bert'"):
        lm_head_parts(BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=8)))


def test_installed_forward_returns_the_lean_loss_and_leaves_generation_alone():
    torch.manual_seed(0)
    model = MODELS["bart"]().eval()
    batch = batch_for(model, seed=2)
    inputs = model_inputs(batch)
    ref = token_ce_sum(model(**inputs).logits, batch["labels"])
    generated = model.generate(input_ids=inputs["input_ids"],
                               attention_mask=inputs["attention_mask"], max_new_tokens=4,
                               do_sample=False)
    install_lean_loss(model, chunk_size=3)
    assert "decoder_input_ids" in inspect.signature(model.forward).parameters
    lean = model(**inputs, lean_ce_labels=batch["labels"])
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(model(**inputs).logits.float().sum(), ref.new_tensor(0) +
                               model.lm_head(decoder_hidden_states(model, inputs)).add(
                                   model.final_logits_bias).sum())
    again = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           max_new_tokens=4, do_sample=False)
    assert torch.equal(again, generated)
    # A copy's forward belongs to the copy (its own weights), not to the original.
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.final_logits_bias.normal_()
    shifted = twin(**inputs, lean_ce_labels=batch["labels"])
    assert not torch.allclose(shifted, lean)
    uninstall_lean_loss(model)
    assert model.forward.__func__ is type(model).forward
    assert torch.equal(model(**inputs).logits, twin.__class__.forward(model, **inputs).logits)


# ---------------------------------------------------------------------------------------------
# Through the DeepSpeed engine, as the training loop calls it

_ENGINE_SCRIPT = r'''
import copy, json, sys
import deepspeed, torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad
sys.path.insert(0, sys.argv[1])
from test_lean_ce import MODELS, batch_for
from seq2seq_es.engine.loss import token_ce_sum
from seq2seq_es.kernels.lean_ce import install_lean_loss

deepspeed.init_distributed(dist_backend="gloo")
rank = torch.distributed.get_rank()
torch.manual_seed(0)
base = MODELS["bart"]().train()
batches = [batch_for(base, seed=rank * 10 + k) for k in range(2)]
# ZeRO-3 releasing every parameter as soon as its module is done: the LM-head weight read by
# the lean loss must be gathered again, and its gradient reduce-scattered.
config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                "stage3_max_live_parameters": 0, "stage3_max_reuse_distance": 0,
                                "stage3_prefetch_bucket_size": 0},
          "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
out = {}
for mode in ("logits", "lean"):
    model = copy.deepcopy(base)
    if mode == "lean":
        install_lean_loss(model, chunk_size=5)
    # eps 1e-6, not 1e-8: Adam's first steps move a weight by about lr * g / (|g| + eps), so a
    # gradient near eps turns the two losses' float rounding into a visible weight difference
    # (1.5e-5 on one element on an AVX-512 machine); with 1e-6 the worst is 5e-7.
    engine, *_ = deepspeed.initialize(
        model=model, config=config,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6))
    losses = []
    for step in range(2):
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "example_index")}
            if mode == "lean":
                ce = engine(**inputs, lean_ce_labels=batch["labels"])
            else:
                ce = token_ce_sum(engine(**inputs).logits, batch["labels"])
            losses.append(ce.item())
            engine.backward(ce)
            engine.step()
    out[mode] = {"losses": losses,
                 "params": {n: safe_get_full_fp32_param(p).tolist()
                            for n, p in engine.module.named_parameters()}}
if rank == 0:
    print("RESULT " + json.dumps(out))
# Both ranks leave the group together, then leave as the package's processes do: DeepSpeed
# keeps the groups past destroy_process_group, and interpreter teardown beside gloo's threads
# aborted rank 1 now and then ("terminate called without an active exception", SIGABRT) after
# the results were printed (seq2seq_es/process_exit.py says why).
torch.distributed.barrier()
torch.distributed.destroy_process_group()
from seq2seq_es.process_exit import leave
leave(0)
'''


@pytest.mark.slow
def test_through_a_zero3_engine_on_two_ranks_training_matches_the_logits_loss(tmp_path):
    import json
    from seq2seq_es.engine.rendezvous import any_free_port
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "engine_lean.py"
    script.write_text(_ENGINE_SCRIPT)
    port = any_free_port()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(port), str(script), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    logits, lean = out["logits"], out["lean"]
    assert len(lean["losses"]) == 4 and lean["losses"][2] != lean["losses"][0]   # it trained
    assert lean["losses"] == pytest.approx(logits["losses"], rel=1e-5)
    assert lean["params"].keys() == logits["params"].keys()
    for name, want in logits["params"].items():
        torch.testing.assert_close(torch.tensor(lean["params"][name]), torch.tensor(want),
                                   rtol=1e-4, atol=1e-5, msg=name)


def test_label_smoothing_is_the_trainers_and_the_lean_loss_matches_it():
    # optim.label_smoothing e: per token (1 - e) CE + e x mean over the vocabulary of -log p,
    # the Trainer's LabelSmoother (written out here), on both loss paths.
    hidden, weight, bias, labels = random_problem()
    logits = (hidden @ weight.T + bias).float()
    log_p = logits.log_softmax(-1)
    kept = labels != -100
    nll = -log_p[kept].gather(1, labels[kept][:, None]).squeeze(1)
    by_hand = (0.9 * nll + 0.1 * -log_p[kept].mean(-1)).sum()
    full = token_ce_sum(logits, labels, 0.1)
    torch.testing.assert_close(full, by_hand, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(full, token_ce_sum(logits, labels), rtol=1e-3)
    for chunk_size in (7, 4096):
        lean = chunked_cross_entropy_sum(hidden, weight, labels, bias, chunk_size=chunk_size,
                                         label_smoothing=0.1)
        torch.testing.assert_close(lean, full, rtol=1e-5, atol=1e-4)
        full = token_ce_sum((hidden @ weight.T + bias).float(), labels, 0.1)  # a fresh graph
        for got, want in zip(grads(lean, (hidden, weight, bias)),
                             grads(full, (hidden, weight, bias))):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    model = MODELS["t5-v1.1"]().train()  # a hidden scale and no bias on the head
    batch = batch_for(model)
    ref = token_ce_sum(model(**model_inputs(batch)).logits, batch["labels"], 0.2)
    install_lean_loss(model, 5, 0.2)
    try:
        lean = model(**model_inputs(batch), lean_ce_labels=batch["labels"])
    finally:
        uninstall_lean_loss(model)
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-4)
    for g, w in zip(param_grads(model, lean), param_grads(model, ref)):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * max(1.0, w.abs().max()))
