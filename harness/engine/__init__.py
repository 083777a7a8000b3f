"""The training engine: the epoch loop (loop.py), one epoch and one evaluation (step.py), checkpoints
(checkpoint.py) and torchrun support (distributed.py). Takes plain arguments; never reads a spec."""
