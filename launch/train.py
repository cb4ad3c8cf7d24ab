"""Thin entry point for launchers that want a script path:

    torchrun --nproc_per_node 2 launch/train.py --task mlsum --model barto ...
    deepspeed --num_gpus 2 launch/train.py --task mlsum --model barto ...
    accelerate launch --config_file configs/accelerate/zero2.yaml launch/train.py --task ...
"""

import sys

from seq2seq_es.cli import console

if __name__ == "__main__":
    console(["train", *sys.argv[1:]])
