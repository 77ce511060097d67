"""What a training run does: `TrainConfig` (model, budget, optimiser, schedule, augmentation, adversarial
training) and the pieces built from it: the model, the optimiser and the per-step learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..adversarial.attacks import PGD
from ..config import Config
from ..data import Augment, ImageData
from ..models import create_model, model_kwargs


@dataclass(frozen=True)
class TrainConfig(Config):
    """What one training run does. Units in the comments; defaults suit the small CIFAR-10 CNNs."""

    model: str = "mish_cnn"  # a name from library.models.list_models()
    model_kw: dict[str, Any] = field(default_factory=dict)  # the builder's options, e.g. {"depth": 3}
    epochs: int = 15  # passes over the training split
    steps: int = 0  # optimiser steps in all, overriding epochs (the last epoch may be partial); 0 = epochs' worth
    batch_size: int = 256  # images per optimiser step
    optimizer: Literal["adamw", "adam", "sgd", "sgd_1024"] = "adamw"  # sgd = SGD with Nesterov momentum;
    # sgd_1024 = airbench's SGD-Nesterov: lr and weight_decay stated per 1,024 examples, decay decoupled from lr
    lr: float = 3e-3  # peak learning rate, reached at the end of warm-up (sgd_1024: per 1,024 examples, ~10)
    weight_decay: float = 5e-2  # decoupled for adamw, L2 for adam/sgd (use ~5e-4 there), never on norms/biases;
    # sgd_1024: decoupled, per 1,024 examples, on every parameter (airbench: ~0.015)
    norm_bias_lr: float = 1.0  # learning-rate multiplier for the biases of normalisation layers (airbench: 64)
    momentum: float = 0.9  # SGD momentum, or Adam's beta1
    schedule: Literal["cosine", "linear", "onecycle", "constant"] = "cosine"  # shape after the warm-up
    warmup_epochs: float = 1.0  # linear warm-up, epochs (fractions allowed)
    warmup_start: float = 0.01  # the warm-up's first learning rate, as a fraction of lr
    final_lr: float = 0.0  # the cosine or linear schedule's last learning rate, as a fraction of lr
    ema_decay: float = 0.0  # > 0: an exponential moving average of the weights, updated every step with this
    # decay (e.g. 0.99); validation, test and the returned model use it
    lookahead_steps: int = 0  # > 0: Lookahead (Zhang et al., 2019): every this many steps the slow weights move
    # lookahead_alpha of the way to the fast ones, which restart from them; the returned model is the slow one
    lookahead_alpha: float = 0.5  # how far the slow weights move toward the fast ones, 0..1 (with lookahead_steps)
    tta: Literal["none", "flip", "flip_translate"] = "none"  # test-time augmentation in validation and test:
    # the logits averaged over the image and its mirror (and, with translate, one-pixel shifts of both)
    label_smoothing: float = 0.0  # probability mass spread over all classes, 0..1
    crop: Literal["none", "pad", "resized"] = "pad"  # pad = zero-pad + random crop; resized = RandomResizedCrop
    crop_pad: int = 4  # pixels, for crop=pad
    crop_scale_min: float = 0.8  # smallest area fraction, for crop=resized
    flip: bool = True  # random horizontal flip, p = 0.5
    flip_mode: Literal["random", "alternate"] = "random"  # alternate (airbench): each image mirrored every other
    # epoch, starting at random (crop=pad or none)
    crop_pad_mode: Literal["zeros", "reflect"] = "zeros"  # crop=pad's padding; reflect = airbench's translation
    cutout: int = 0  # side of a zeroed square, pixels; 0 = off
    eval_batch_size: int = 0  # images per forward pass when evaluating; 0 = 256 on the CPU, 1024 on a GPU (see
    # library/train/evaluation.py's eval_batch_size)
    seed: int = 0  # weights, data order and augmentation
    device: str = "auto"  # auto = the GPU when there is one
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on the CPU
    channels_last: bool = True  # NHWC memory format: on CUDA; on the CPU where it times faster for the model
    log_steps: bool = False  # also record every iteration: training loss, batch accuracy and G = max|dL/dw| of
    # the first and last conv layers (A6), read from gradient hooks
    adv_eps_255: float = 0.0  # PGD adversarial training (D10, Madry et al. 2018): train on L∞ PGD images of this
    # radius, in pixel levels (8 = 8/255); 0 = standard training
    adv_steps: int = 7  # PGD iterations per training batch (each one forward + backward more per step)
    adv_step_ratio: float = 0.25  # PGD step size / ε
    robust_eps_255: float = 0.0  # also report val_robust_acc, the validation accuracy under PGD (adv_steps,
    # random start) at this radius; 0 = adv_eps_255 (neither: not reported)
    robust_images: int = 512  # images attacked for that accuracy (the first ones): of the validation split each
    # epoch, and of the test set once by a final fit

    def __post_init__(self):
        super().__post_init__()
        self.require(**{
            "epochs": self.epochs >= 1,
            "steps": self.steps >= 0,
            "batch_size": self.batch_size >= 1,
            "eval_batch_size": self.eval_batch_size >= 0,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "norm_bias_lr": self.norm_bias_lr > 0,
            "warmup_start": 0 < self.warmup_start <= 1,
            "final_lr": 0 <= self.final_lr <= 1,
            "ema_decay": 0 <= self.ema_decay < 1,
            "lookahead_steps": self.lookahead_steps >= 0,
            "lookahead_alpha": 0 < self.lookahead_alpha <= 1,
            "flip_mode": self.flip_mode == "random" or self.crop != "resized",
            "momentum": 0 <= self.momentum < 1,
            "warmup_epochs": self.warmup_epochs >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "crop_pad": self.crop_pad >= 0,
            "crop_scale_min": 0 < self.crop_scale_min <= 1,
            "cutout": self.cutout >= 0,
            "adv_eps_255": 0 <= self.adv_eps_255 <= 255,
            "adv_steps": self.adv_steps >= 1,
            "adv_step_ratio": self.adv_step_ratio > 0,
            "robust_eps_255": 0 <= self.robust_eps_255 <= 255,
            "robust_images": self.robust_images >= 1,
        })

    def augment(self) -> Augment:
        return Augment(self.crop, self.crop_pad, self.crop_scale_min, self.flip, self.cutout, self.crop_pad_mode,
                       self.flip_mode)

    @property
    def robust_eps(self) -> float:
        """The radius val_robust_acc is measured at, in [0, 1] units; 0 = not measured."""
        return (self.robust_eps_255 or self.adv_eps_255) / 255

    def adversary(self, model: nn.Module, generator: torch.Generator) -> PGD | None:
        """The PGD attack that makes the training batches (a fresh random start per batch from `generator`,
        which the checkpoint carries), or None for standard training."""
        if not self.adv_eps_255:
            return None
        eps = self.adv_eps_255 / 255
        return PGD(model, eps, alpha=self.adv_step_ratio * eps, steps=self.adv_steps, early_stop=False,
                   generator=generator)

    def budget(self, steps_per_epoch: int) -> tuple[int, int]:
        """(epochs, optimiser steps) of the whole run, for an epoch of `steps_per_epoch` batches."""
        if self.steps:
            return -(-self.steps // steps_per_epoch), self.steps
        return self.epochs, self.epochs * steps_per_epoch


def model_options(cfg: TrainConfig, data: ImageData) -> dict[str, Any]:
    """The keyword arguments that build `cfg.model` for `data`: its classes and input channels, then
    `cfg.model_kw`. Logged with the weights, so the model can be rebuilt from them alone."""
    options: dict[str, Any] = {"num_classes": data.num_classes}
    if "in_chans" in model_kwargs(cfg.model):
        options["in_chans"] = data.image_shape[0]
    return {**options, **cfg.model_kw}


def build_model(cfg: TrainConfig, data: ImageData) -> nn.Module:
    return create_model(cfg.model, **model_options(cfg, data))


def _norm_biases(model: nn.Module) -> list[nn.Parameter]:
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    return [m.bias for m in model.modules() if isinstance(m, norms) and m.bias is not None and m.bias.requires_grad]


def _decay_split(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's grouping (`param_groups_weight_decay`, written out: importing timm costs a fresh trial process
    1.4 s): [no decay, decay], decay only on tensors of two dimensions or more that are not biases."""
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decayed = {id(p) for name, p in trained if weight_decay and p.ndim > 1 and not name.endswith(".bias")}
    groups = [{"params": [p for _, p in trained if id(p) not in decayed], "weight_decay": 0.0},
              {"params": [p for _, p in trained if id(p) in decayed], "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


def param_groups(cfg: TrainConfig, model: nn.Module) -> list[dict[str, Any]]:
    """The optimiser's parameter groups, each with its own lr and weight_decay (recomputed on a resume).

    adamw/adam/sgd: timm's grouping, decay only on weight matrices and conv kernels (decaying norm scales and
    biases only fights the norm layers): [no decay, decay], the second absent when weight_decay is 0. sgd_1024:
    airbench's units for a mean loss over a batch of B: lr·B/K per step and a decay of weight_decay·B/K per step
    whatever the lr (K = 1024·(1 + 1/(1 − momentum)), the examples a step's momentum spreads over, per 1,024).
    Either way normalisation biases run at lr × norm_bias_lr, in a group of their own."""
    biases = {id(p) for p in _norm_biases(model)} if cfg.norm_bias_lr != 1 else set()
    if cfg.optimizer == "sgd_1024":
        kilo = 1024 * (1 + 1 / (1 - cfg.momentum))
        lr, decay = cfg.lr * cfg.batch_size / kilo, cfg.weight_decay * cfg.batch_size / kilo
        trained = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trained if id(p) not in biases], "lr": lr}]
        groups += [{"params": [p for p in trained if id(p) in biases], "lr": lr * cfg.norm_bias_lr}]
        for group in groups:
            group["weight_decay"] = decay / group["lr"]  # torch scales decay by lr: this undoes it
        return [g for g in groups if g["params"]]
    groups = [dict(g, lr=cfg.lr) for g in _decay_split(model, cfg.weight_decay)]
    if biases:
        groups = [dict(g, params=[p for p in g["params"] if id(p) not in biases]) for g in groups]
        groups.append({"params": [p for p in model.parameters() if id(p) in biases], "lr": cfg.lr * cfg.norm_bias_lr,
                       "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(cfg, model)
    if cfg.optimizer in ("sgd", "sgd_1024"):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step factor on each group's lr: linear warm-up from `warmup_start`, then cosine or linear down to
    `final_lr`, constant, or PyTorch's one-cycle."""
    total = max(1, cfg.budget(steps_per_epoch)[1])
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=max(warmup, 1) / total, cycle_momentum=cfg.optimizer in ("sgd", "sgd_1024"),
        )

    def factor(step: int) -> float:
        if step < warmup:
            return cfg.warmup_start + (1 - cfg.warmup_start) * step / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(1, total - warmup), 1.0)
        shape = 1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.final_lr + (1 - cfg.final_lr) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adopt_hyperparameters(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """After loading a checkpoint, use `cfg`'s lr and weight decay rather than the checkpoint's: a resumed run
    may carry new ones (Population Based Training's explore step). The schedule's position is kept. OneCycle
    owns its learning rates, so a new lr for it is an error rather than silently ignored."""
    fresh = param_groups(cfg, model)
    if [len(g["params"]) for g in fresh] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"weight_decay={cfg.weight_decay} or norm_bias_lr={cfg.norm_bias_lr} groups the parameters "
                         "otherwise than the run that wrote the checkpoint (e.g. decay where it started without)")
    for group, new in zip(optimizer.param_groups, fresh):
        group["weight_decay"] = new["weight_decay"]
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs = [g["lr"] for g in fresh]
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
    elif not math.isclose(optimizer.param_groups[0].get("max_lr", fresh[0]["lr"]), fresh[0]["lr"]):
        raise ValueError(f"schedule={cfg.schedule} cannot take a new lr={cfg.lr} mid-run (it was "
                         f"{optimizer.param_groups[0]['max_lr']}); use schedule=cosine or constant")
