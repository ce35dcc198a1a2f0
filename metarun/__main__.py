"""`python -m metarun ...`, as `torchrun --nproc_per_node=N -m metarun ...` starts it: the `metarun` command."""

from metarun.cli import main

main()
