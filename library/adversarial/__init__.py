"""Adversarial examples: `attacks` (one small class per attack over a shared base), `registry` (the one name ->
attack table and AttackSpec), `robustness` (ε-sweeps with robust flags or bisection, Wilson intervals, the PGD
table), `transforms` (D2's differentiable transformations), `synthesis` (class maximisation, feature inversion).
Imports the plumbing and explain only."""
