"""Searches and studies on Ray Tune: `space` (search spaces as data), `trainable` (one trial, lean to import),
`sweep` (searcher, scheduler, run_sweep), `checkpoints` (a trial's state read safely, with a fallback; Tune's
state and free disk checked), `trial_runs` (one MLflow child run per trial, from the driver; orphans tagged),
`pending` (its writes wait out a tracking-server outage), `progress` (the console while trials run), `outcome`
(finished or interrupted, concluded once), `study` (variants × seeds as a tested grid), and `sweep_report` /
`study_report`, which rebuild the comparisons from MLflow alone and load no Ray. Imports the plumbing and
train/."""
