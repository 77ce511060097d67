"""Adversarial attacks, ε-sweeps, images made from input gradients."""
