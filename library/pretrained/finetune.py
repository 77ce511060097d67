"""Fine-tuning a timm backbone on a photo data set, from pretrained weights or from scratch (C5).

Images are decoded per batch by a DataLoader (photos differ in size, so they cannot live on the device as one
tensor the way CIFAR-10 does), with timm's training transform (random resized crop, flip) built from the
model's own data config, and its evaluation transform for validation and test.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import Config
from ..data.photos import PhotoDataset, PhotoSet
from ..runtime import eval_mode, pick_device, seed_everything
from .backbones import Backbone


@dataclass(frozen=True)
class FinetuneConfig(Config):
    epochs: int = 5  # of each arm (fine-tuned and from scratch)
    batch_size: int = 32  # images per optimiser step
    lr: float = 1e-3  # for the new head; the pretrained body gets lr × body_lr_scale
    body_lr_scale: float = 0.1  # a pretrained body moves slower than the new head; from scratch: 1
    weight_decay: float = 0.05  # AdamW's, decoupled
    workers: int = 2  # DataLoader processes decoding images
    seed: int = 0  # the new head, the augmentations and the data order
    device: str = "auto"  # auto = the GPU when there is one


@torch.no_grad()
def top_k_accuracy(model, photos: PhotoSet, transform, batch_size: int, device: torch.device, workers: int = 0,
                   ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies (k capped at the number of classes) of `model` on `photos`; restores its mode."""
    hits = {k: 0 for k in ks}
    loader = torch.utils.data.DataLoader(PhotoDataset(photos, transform), batch_size=batch_size, num_workers=workers)
    with eval_mode(model):
        for x, y, _ in loader:
            ranked = model(x.to(device)).topk(min(max(ks), len(photos.classes)), dim=1).indices.cpu()
            for k in ks:
                hits[k] += (ranked[:, :k] == y[:, None]).any(1).sum().item()
    return {f"top{k}": hits[k] / max(1, len(photos)) for k in ks}


def finetune(backbone: Backbone, train: PhotoSet, test: PhotoSet, cfg: FinetuneConfig, pretrained: bool) -> dict:
    """Train `backbone` with a new head for `train.classes` (all layers), then test once. Returns the per-epoch
    history and the test top-1/top-5."""
    import timm.data

    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model = backbone.model
    model.reset_classifier(len(train.classes))
    model.to(device).train()
    head = set(map(id, model.get_classifier().parameters()))
    body_scale = cfg.body_lr_scale if pretrained else 1.0
    groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": cfg.lr * body_scale},
              {"params": list(model.get_classifier().parameters()), "lr": cfg.lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    train_transform = timm.data.create_transform(**backbone.data_config, is_training=True)
    loader = torch.utils.data.DataLoader(PhotoDataset(train, train_transform), batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=cfg.workers, drop_last=len(train) > cfg.batch_size,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    total = cfg.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    history = []
    for epoch in range(1, cfg.epochs + 1):
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        for x, y, _ in loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
        history.append({"epoch": epoch, "train_loss": loss_sum / max(1, seen), "epoch_s": time.perf_counter() - start})
    test_scores = top_k_accuracy(model, test, backbone.transform(), cfg.batch_size, device, cfg.workers)
    return {"history": history, "test": test_scores, "train_s": sum(h["epoch_s"] for h in history)}
