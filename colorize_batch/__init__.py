"""colorize-batch: colorize folders of black-and-white photographs with a pix2pix U-Net."""

import os

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning (GNU OpenMP spins ~300k iterations after each
# parallel region by default). Between the forward pass's parallel regions the spinning thread
# would take the core from the decode worker and the writer threads: measured on 2 cores, the
# pipeline's non-network CPU time fell by a third, forward-only speed did not change. It has
# to be in the environment before torch loads libgomp, so it is set here, on first import;
# a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
