"""A sweep's time budget (`SweepOptions.time_budget_s`) as Tune keeps it, and whether it ended the sweep.

Tune's `TimeoutStopper` counts the time its sweep is active, and a restored sweep carries what earlier runs of
the command spent (the stopper is saved with the sweep's state). The command can therefore not tell from the
wall time of its own `fit()` whether the budget ran out: a sweep interrupted after 40 s and resumed stops 40 s
early, and was then taken for interrupted (exit 130) instead of finished. `SweepBudget` is that stopper, saying
in the driver, where Tune's controller calls it, that it stopped the sweep.
"""
from __future__ import annotations

from ray.tune.stopper import TimeoutStopper

_spent: set[str] = set()  # the sweeps (by experiment path) whose budget ran out in this process


class SweepBudget(TimeoutStopper):
    def __init__(self, seconds: float, sweep: str):
        super().__init__(seconds)
        self.sweep = sweep

    def stop_all(self) -> bool:
        out_of_time = super().stop_all()
        if out_of_time:
            _spent.add(self.sweep)
        return out_of_time


def budget_spent(sweep: str) -> bool:
    """Whether the sweep stored at `sweep` (its experiment path) was stopped by its time budget in this process."""
    return sweep in _spent
