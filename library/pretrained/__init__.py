"""Pretrained backbones through timm: `backbones` (weights from the hub, a file, a package or none, loaded
safely; BackboneSpec; the model's own preprocessing), `features` (pooled pre-logits as Ray tasks into a
content-addressed cache), `probe` (linear probes), `finetune` (C5). Imports the plumbing and data/ only."""
