"""The TGDP simulation: the two-Gaussian task, TGDP and its baselines, scored against exact answers."""
