"""LED source lengths past the loaded checkpoint's positions are refused before training (and
by predict, under its own flag), and bucketed batching never rounds a source bucket past what
the window alone needs: both failed with an IndexError in the embedding, after loading."""

import pytest

from seq2seq_es.config import compose
from seq2seq_es.engine.builders import check_source_positions, source_bucket_align
from seq2seq_es.errors import ConfigError


def test_bucket_align_keeps_the_window_padding_of_the_longest_sources():
    assert source_bucket_align(4092, 12) == 12      # lcm(8, 12) = 24 would give 4104 > 4096
    assert source_bucket_align(4080, 12) == 24      # 4080 is a multiple of 24: nothing lost
    assert source_bucket_align(4000, 16) == 16
    assert source_bucket_align(1000, 1) == 8        # BART, T5 and the pairs: unchanged
    assert source_bucket_align(1021, 8) == 8


def test_checkpoint_positions_fewer_than_the_source_length_are_refused(tmp_path, capsys):
    from seq2seq_es.models import convert_bart_to_led, load_model_and_tokenizer, save_model
    from seq2seq_es.models.registry import get_model_spec

    bart, tokenizer = load_model_and_tokenizer("barto-tiny")
    save_model(bart, tmp_path / "bart")
    tokenizer.save_pretrained(tmp_path / "bart")
    convert_bart_to_led(str(tmp_path / "bart"), str(tmp_path / "led"), max_positions=512,
                        attention_window=64)
    led, _ = load_model_and_tokenizer("ledo-tiny", str(tmp_path / "led"))
    spec = get_model_spec("ledo-tiny")
    ok = compose("xlsum", "ledo-tiny", overrides={"model.path": str(tmp_path / "led"),
                                                  "data.max_source_length": "500"})
    check_source_positions(ok, spec, led)           # pads to 512: fits
    cfg = compose("xlsum", "ledo-tiny", overrides={"model.path": str(tmp_path / "led"),
                                                   "data.max_source_length": "1000"})
    with pytest.raises(ConfigError) as err:
        check_source_positions(cfg, spec, led)
    assert str(err.value) == (
        "config key 'data.max_source_length': 1000 (padded to 1024, a multiple of its attention "
        f"window 64) exceeds the 512 source positions of the checkpoint {tmp_path / 'led'}: "
        "512 or less fits")
    # predict names its own flag for the value (it takes no --data.* keys)
    from seq2seq_es.cli import main

    (tmp_path / "in.txt").write_text("Un texto largo.\n", encoding="utf-8")
    predict = ["predict", str(tmp_path / "led"), "--model", "ledo-tiny", "--task", "xlsum",
               "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt")]
    assert main([*predict, "--max-source-length", "1000"]) == 2
    assert ("error: argument --max-source-length: 1000 (padded to 1024, a multiple of its "
            "attention window 64) exceeds the 512 source positions") in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()
    # beyond the model's own positions: refused by the config check, named by the flag too
    assert main([*predict, "--max-source-length", "5000"]) == 2
    assert ("error: argument --max-source-length: 5000 exceeds the 4096 source positions of "
            "model 'ledo-tiny'") in capsys.readouterr().err
