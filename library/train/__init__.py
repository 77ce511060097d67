"""One training run, plain PyTorch and no Ray: `recipe` (TrainConfig: model, budget, optimiser, schedule,
augmentation, adversarial training), `loop` (train, evaluate, checkpoints), `step_metrics` (per-iteration loss,
accuracy, gradient magnitude), `fit` (fit + test once as a unit of work, in process or a Ray task, and its
MLflow record), `bias_before_bn` (A10a's check). Imports the plumbing, data/, models/ and adversarial/ (PGD)."""
