"""One training run: `recipe` (TrainConfig: model, budget, optimiser, schedule, augmentation, weight averages,
adversarial training), `loop` (train, checkpoints; plain PyTorch, no Ray), `evaluation` (evaluate with
test-time augmentation, accuracy under PGD), `averaging` (EMA, Lookahead), `step_metrics` (per-iteration loss,
accuracy, gradient magnitude), `fit` (fit + test once as a unit of work, in process or a Ray task, its MLflow
record, a search's final fit), `bias_before_bn` (A10a's check). Imports the plumbing, data/, models/ and
adversarial/ (PGD)."""
