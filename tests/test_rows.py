"""Rows of a tokenized split read in one batched query (data/rows.py): the same dicts as a read
per row, in the order asked, and the training loop and evaluation read that way."""

from __future__ import annotations

import datasets
import pytest

from seq2seq_es.data.rows import rows_of, source_lengths


@pytest.fixture
def split():
    return datasets.Dataset.from_dict({
        "input_ids": [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]],
        "labels": [[1], [2, 3], [4, 5, 6], [7]],
        "global_attention_mask": [[1, 0, 0], [1], [1, 0], [1, 0, 0, 0]]})


@pytest.mark.parametrize("indices", [[3, 0, 2], [1, 1, 0], [2], []])
def test_rows_are_those_of_reads_one_by_one_in_the_order_asked(split, indices):
    assert rows_of(split, indices) == [split[i] for i in indices]
    shuffled = split.select([3, 1, 0, 2])  # an indices mapping, as after select or shuffle
    assert rows_of(shuffled, indices) == [shuffled[i] for i in indices]
    as_list = [split[i] for i in range(len(split))]
    assert rows_of(as_list, indices) == [as_list[i] for i in indices]


def test_a_formatted_split_is_read_row_by_row(split):
    formatted = split.with_format("numpy")
    rows = rows_of(formatted, [2, 0])
    assert [row["input_ids"].tolist() for row in rows] == [[5, 6], [1, 2, 3]]


def test_source_lengths(split):
    assert source_lengths(split) == [3, 1, 2, 4]
    assert source_lengths(split.select([3, 1])) == [4, 1]
    assert source_lengths([{"input_ids": [1, 2]}, {"input_ids": []}]) == [2, 0]


def test_the_training_loop_reads_each_micro_batch_in_one_query(tmp_path, one_rank, monkeypatch):
    from test_step_syncs import _run_config

    from engine_runs import demo_files
    from seq2seq_es.engine import trainer

    files = demo_files(tmp_path / "data", train_size=32)
    cfg = _run_config(files, tmp_path / "run")
    cfg.train.max_steps, cfg.train.grad_accum = 3, 2
    reads = []
    original = datasets.Dataset.__getitem__

    def counted(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(datasets.Dataset, "__getitem__", counted)
    trainer.train(cfg)
    batches = [key for key in reads if isinstance(key, list)]
    assert len(batches) == 3 * 2 and all(len(key) == 2 for key in batches)
    assert not [key for key in reads if isinstance(key, int)]  # no row read alone
