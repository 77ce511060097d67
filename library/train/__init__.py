"""Training: the loop, per-iteration metrics, a fit as a unit of work."""
