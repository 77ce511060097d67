"""A sweep's time budget (`SweepOptions.time_budget_s`) as Tune keeps it, and whether it ended the sweep.

Tune's `TimeoutStopper` counts the time its sweep is active, and a restored sweep carries what earlier runs of
the command spent (the stopper is saved with the sweep's state). The command can therefore not tell from the
wall time of its own `fit()` whether the budget ran out: a sweep interrupted after 40 s and resumed stops 40 s
early, and was then taken for interrupted (exit 130) instead of finished. `SweepBudget` is that stopper, saying
in the driver, where Tune's controller calls it, that it stopped the sweep.

The budget itself is the command's: `time_budget_s` is a run setting (changing it continues the same sweep), so
a sweep interrupted and resumed with a larger budget goes on for the difference, measured against what it has
spent so far. Tune restores the stopper it saved, with the budget it was started with; `SweepBudget` takes the
current one from `expect()`, which the command calls before Tune restores its state. A sweep its budget ended
is over whatever the budget now: Tune then ends its search and terminates its trials, so the stopper remembers
that it ended the sweep, and a re-run of the command goes on to what follows the search.
"""
from __future__ import annotations

from ray.tune.stopper import TimeoutStopper

_spent: set[str] = set()  # the sweeps (by experiment path) whose budget ran out in this process
_limits: dict[str, float] = {}  # the budget this process's command gives each sweep


class SweepBudget(TimeoutStopper):
    def __init__(self, seconds: float, sweep: str):
        super().__init__(seconds)
        self.sweep = sweep
        self.ended_sweep = False

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if self.__dict__.setdefault("ended_sweep", False):
            _spent.add(self.sweep)
            return
        limit = _limits.get(self.sweep, self._timeout_seconds) or float("inf")  # 0: no limit
        self._budget += limit - self._timeout_seconds  # what is left of the command's budget after what was spent
        self._timeout_seconds = limit

    def stop_all(self) -> bool:
        out_of_time = super().stop_all()
        if out_of_time:
            self.ended_sweep = True  # saved with Tune's state: a re-run knows it
            _spent.add(self.sweep)
        return out_of_time


def expect(sweep: str, seconds: float) -> None:
    """This command runs the sweep stored at `sweep` with a budget of `seconds` (restored budgets follow it)."""
    _limits[sweep] = seconds


def budget_spent(sweep: str) -> bool:
    """Whether the sweep stored at `sweep` (its experiment path) was stopped by its time budget in this process."""
    return sweep in _spent
