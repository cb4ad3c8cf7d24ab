"""`python -m seq2seq_es.metrics ...`: the same as `seq2seq-es score ...`."""

import sys

from seq2seq_es.metrics.cli import score_main

raise SystemExit(score_main(sys.argv[1:]))
