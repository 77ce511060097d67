"""Supervised training of a registry model on an `ImageData`: plain PyTorch, no Ray, no MLflow.

`train(cfg, data, on_epoch)` runs the loop and calls `on_epoch(metrics, state)` after every epoch; the Tune
adapter reports and checkpoints from there, jobs log to MLflow from there. `state.state_dict()` is a complete
checkpoint and `train(..., resume=that_dict)` carries on from it.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..adversarial.attacks import PGD
from ..config import ConfigError, project
from ..data import Augment, DeviceLoader, ImageData, ImageSet
from ..models import create_model, model_kwargs
from ..runtime import eval_mode, keep_freed_memory, pick_device, seed_everything
from .step_metrics import StepRecorder


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does. Units in the comments; defaults suit the small CIFAR-10 CNNs."""

    model: str = "mish_cnn"  # a name from library.models.list_models()
    model_kw: dict[str, Any] = field(default_factory=dict)  # the builder's options, e.g. {"depth": 3}
    epochs: int = 15  # passes over the training split
    steps: int = 0  # optimiser steps in all, overriding epochs (the last epoch may be partial); 0 = epochs' worth
    batch_size: int = 256  # images per optimiser step
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"  # sgd = SGD with Nesterov momentum
    lr: float = 3e-3  # peak learning rate, reached at the end of warm-up
    weight_decay: float = 5e-2  # decoupled for adamw, L2 for adam/sgd (use ~5e-4 there); never on norms/biases
    momentum: float = 0.9  # SGD momentum, or Adam's beta1
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"  # shape after the warm-up
    warmup_epochs: float = 1.0  # linear warm-up from lr/100, epochs (fractions allowed)
    label_smoothing: float = 0.0  # probability mass spread over all classes, 0..1
    crop: Literal["none", "pad", "resized"] = "pad"  # pad = zero-pad + random crop; resized = RandomResizedCrop
    crop_pad: int = 4  # pixels, for crop=pad
    crop_scale_min: float = 0.8  # smallest area fraction, for crop=resized
    flip: bool = True  # random horizontal flip, p = 0.5
    cutout: int = 0  # side of a zeroed square, pixels; 0 = off
    eval_batch_size: int = 1024  # images per forward pass when evaluating
    seed: int = 0  # weights, data order and augmentation
    device: str = "auto"  # auto = the GPU when there is one
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on the CPU
    channels_last: bool = True  # NHWC memory format on CUDA; ignored on the CPU
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
        checks = {
            "epochs": self.epochs >= 1,
            "steps": self.steps >= 0,
            "batch_size": self.batch_size >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
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
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} is out of range")

    def augment(self) -> Augment:
        return Augment(self.crop, self.crop_pad, self.crop_scale_min, self.flip, self.cutout)

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


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Decay only weight matrices and conv kernels: decaying norm scales and biases only fights the norm layers.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step schedule: linear warm-up from lr/100, then cosine to zero, constant, or PyTorch's one-cycle."""
    total = max(1, cfg.budget(steps_per_epoch)[1])
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=max(warmup, 1) / total,
            cycle_momentum=cfg.optimizer == "sgd",
        )

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _adopt_hyperparameters(cfg: TrainConfig, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """After loading a checkpoint, use `cfg`'s lr and weight decay rather than the checkpoint's: a resumed run
    may carry new ones (Population Based Training's explore step). The schedule's position is kept."""
    decayed = optimizer.param_groups[0]
    decayed["weight_decay"] = cfg.weight_decay
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs = [cfg.lr] * len(scheduler.base_lrs)
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group["lr"] = cfg.lr * factor(scheduler.last_epoch)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 1024, amp: bool = True) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` on `data` (moved to the model's device); restores its mode."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with eval_mode(model):
        for x, y in DeviceLoader(data.to(device), batch_size):
            with _autocast(device, amp):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = max(1, len(data))
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


def robust_accuracy(model: nn.Module, data: ImageSet, cfg: TrainConfig) -> float:
    """Accuracy on PGD images (radius `cfg.robust_eps`, `cfg.adv_steps` steps from a seeded random start) of the
    first `cfg.robust_images` images of `data`; the model's mode is restored."""
    device = next(model.parameters()).device
    eps = cfg.robust_eps
    attack = PGD(model, eps, alpha=cfg.adv_step_ratio * eps, steps=cfg.adv_steps, seed=cfg.seed)
    n = cfg.robust_images
    subset = ImageSet(data.images[:n], data.labels[:n]).to(device)
    correct = 0
    for x, y in DeviceLoader(subset, cfg.eval_batch_size):
        with _autocast(device, cfg.amp):
            correct += int((attack(x, y).probabilities.argmax(1) == y).sum())
    return correct / max(1, len(subset))


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it stopped."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0  # optimiser steps completed
    total_epochs: int = 0  # epochs the run will have when done
    epoch_steps: list[dict[str, float]] = field(default_factory=list)  # per-iteration rows of the latest epoch
    # (cfg.log_steps); not checkpointed: reported by then

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy): training goes on mutating the live tensors after this returns."""
        return copy.deepcopy({
            "config": asdict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "history": list(self.history),
            "step": self.step,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.generator.set_state(state["generator"].to("cpu"))
            self.epoch, self.history = int(state["epoch"]), list(state["history"])
            self.step = int(state.get("step", 0))
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(f"checkpoint does not match this model/config and cannot be resumed: {e}") from e


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]  # one dict of metrics per epoch
    steps: list[dict[str, float]] = field(default_factory=list)  # one dict per iteration, with cfg.log_steps


EpochCallback = Callable[[dict[str, float], TrainState], None]


def train(cfg: TrainConfig, data: ImageData, on_epoch: EpochCallback | None = None,
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train `cfg.model` on `data.train`, evaluating on `data.val` after each epoch (never on `data.test`).

    Metrics per epoch: epoch, train_loss, train_acc (on augmented batches, adversarial ones with
    `cfg.adv_eps_255`), val_loss, val_acc, lr (at the epoch's end), images_per_s (training steps only), epoch_s
    (wall time including evaluation), and with a robust radius (`cfg.robust_eps`) val_robust_acc. With `cfg.log_steps`,
    per-iteration rows too (see `library.step_metrics`): `state.epoch_steps` in `on_epoch`, all in the result.
    """
    device = pick_device(cfg.device)
    keep_freed_memory()
    seed_everything(cfg.seed)
    model = build_model(cfg, data).to(device)
    fast_path = device.type == "cuda"
    memory_format = torch.channels_last if cfg.channels_last and fast_path else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    train_set, val_set = data.train.to(device), data.val.to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    loader = DeviceLoader(train_set, cfg.batch_size, shuffle=True, drop_last=True, augment=cfg.augment(),
                          generator=generator)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    total_epochs, total_steps = cfg.budget(len(loader))
    state = TrainState(project(cfg, TrainConfig), model, optimizer, scheduler, generator, total_epochs=total_epochs)
    if resume is not None:
        state.load_state_dict(resume)
        state.step = state.step or state.epoch * len(loader)  # checkpoints from before steps were counted
        _adopt_hyperparameters(cfg, optimizer, scheduler)
    recorder = StepRecorder(model) if cfg.log_steps else None
    adversary = cfg.adversary(model, generator)
    steps: list[dict[str, float]] = []

    while state.epoch < total_epochs:
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            if state.step >= total_steps:  # a step budget ends part-way through the last epoch
                break
            x = x.contiguous(memory_format=memory_format)
            with _autocast(device, cfg.amp):
                if adversary is not None:  # the attack runs in eval mode (BN's running statistics) and restores train
                    x = adversary(x, y).images
                logits = model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state.step += 1
            if recorder is not None:
                recorder.record(state.step, loss, logits, y)
            loss_sum += loss.detach() * len(y)  # stays on the device: no sync per step
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        _sync(device)
        train_s = time.perf_counter() - start
        train_loss = loss_sum.item() / max(1, seen)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} in epoch {state.epoch + 1}; lower lr={cfg.lr}")
        val = evaluate(model, val_set, cfg.eval_batch_size, cfg.amp) if len(val_set) else {"loss": math.nan, "acc": math.nan}
        state.epoch += 1
        state.epoch_steps = recorder.flush() if recorder is not None else []
        steps += state.epoch_steps
        metrics = {
            "epoch": state.epoch,
            "train_loss": train_loss,
            "train_acc": correct.item() / max(1, seen),
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / train_s,
            "epoch_s": time.perf_counter() - start,
        }
        if cfg.robust_eps and len(val_set):
            metrics["val_robust_acc"] = robust_accuracy(model, val_set, cfg)
            metrics["epoch_s"] = time.perf_counter() - start
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, state)
    if recorder is not None:
        recorder.close()
    return TrainResult(model, state.history, steps)
