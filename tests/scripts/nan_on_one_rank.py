"""`roberta-lora ARGS` in which process 1's training loss becomes NaN at its second micro-batch.

Run by tests/test_training.py under `accelerate launch` with two processes: every process must stop
with the same clear message (none may wait forever in a collective for the one that stopped).
"""

import os
import sys

from roberta_lora.cli.main import main
from roberta_lora.model.wrapper import LoraWrapperRoberta

RANK = int(os.environ.get("RANK", "0"))
real_forward = LoraWrapperRoberta.forward
calls = 0


def forward(self, *args, **kwargs):
    global calls
    output = real_forward(self, *args, **kwargs)
    if self.training and output.loss is not None:
        calls += 1
        if RANK == 1 and calls == 2:
            output.loss = output.loss * float("nan")
    return output


LoraWrapperRoberta.forward = forward
sys.exit(main(sys.argv[1:]))
