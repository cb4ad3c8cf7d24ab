"""Thin entry point for launchers that want a script path: `seq2seq-es evaluate|predict` sharded.

    torchrun --nproc_per_node 2 launch/inference.py evaluate RUN --split test --dist.zero_stage 3
    deepspeed --num_gpus 2 launch/inference.py evaluate RUN/checkpoints/step_00000400
    accelerate launch --config_file configs/accelerate/zero3.yaml launch/inference.py evaluate RUN
    torchrun --nproc_per_node 2 launch/inference.py predict RUN/final --input a.txt --output b.txt

(Not named evaluate.py: a launcher puts this folder first on sys.path, and a script of that name
would shadow the `evaluate` library the metrics import.)
"""

import sys

from seq2seq_es.cli import console

if __name__ == "__main__":
    # The deepspeed launcher puts --local_rank=N before the command; the commands accept it.
    args = [a for a in sys.argv[1:] if not a.startswith(("--local_rank=", "--local-rank="))]
    ranks = [a for a in sys.argv[1:] if a not in args]
    if not args or args[0] not in ("evaluate", "predict"):
        print("usage: launch/inference.py evaluate|predict ...", file=sys.stderr)
        sys.exit(2)
    console([args[0], *ranks, *args[1:]])
