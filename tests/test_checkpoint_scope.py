"""model.checkpoint_scope: with gradient checkpointing, every layer is recomputed in the backward
pass ("all") or the encoder's only ("encoder"), and the gradients are those of no checkpointing."""

import pytest
import torch

from seq2seq_es.config import RunConfig, not_applying
from seq2seq_es.engine.builders import get_model


def _model(name: str, checkpointing: bool, scope: str = "all"):
    cfg = RunConfig()
    cfg.model.name, cfg.model.dropout = name, 0.0
    cfg.model.gradient_checkpointing, cfg.model.checkpoint_scope = checkpointing, scope
    torch.manual_seed(0)
    model, _, spec = get_model(cfg)
    return model.train(), spec


def _first_ffn(stack_owner):
    """A module inside the first layer of a stack (its recompute calls it a second time)."""
    layer = next(m for m in stack_owner.modules() if type(m).__name__.endswith(("Layer", "Block")))
    return next(m for m in layer.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny"])
@pytest.mark.parametrize("scope, encoder_calls, decoder_calls",
                         [("all", 2, 2), ("encoder", 2, 1)])
def test_scope_sets_which_layers_are_recomputed_and_gradients_do_not_change(
        name, scope, encoder_calls, decoder_calls):
    plain, _ = _model(name, False)
    model, _ = _model(name, True, scope)
    model.load_state_dict(plain.state_dict())
    batch = {"input_ids": torch.randint(5, 60, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long),
             "labels": torch.randint(5, 60, (2, 7))}
    calls = {"encoder": 0, "decoder": 0}
    for part, owner in (("encoder", model.get_encoder()), ("decoder", model.get_decoder())):
        _first_ffn(owner).register_forward_hook(
            lambda *_, part=part: calls.__setitem__(part, calls[part] + 1))
    model(**batch).loss.backward()
    plain(**batch).loss.backward()
    assert calls == {"encoder": encoder_calls, "decoder": decoder_calls}
    for (key, p), q in zip(model.named_parameters(), plain.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=key)


def test_scope_is_noted_as_unread_without_checkpointing():
    cfg = RunConfig()
    assert not_applying(cfg)["model.checkpoint_scope"] == "model.gradient_checkpointing=False"
    cfg.model.gradient_checkpointing = True
    assert "model.checkpoint_scope" not in not_applying(cfg)


def test_memory_estimate_of_encoder_scope_lies_between_none_and_all():
    from seq2seq_es.models.memory import estimate, get_shape

    shape = get_shape("ledo")
    none, every, encoder = (estimate(shape, 1, 16384, 512, checkpointing=c, checkpoint_scope=s).total
                            for c, s in ((False, "all"), (True, "all"), (True, "encoder")))
    assert every < encoder < none
