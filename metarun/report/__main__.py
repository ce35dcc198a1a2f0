"""`python -m metarun.report`: the same as `metarun-report`."""

from metarun.report import main

main()
