"""Pretrained backbones: weights, features, probes, fine-tuning."""
