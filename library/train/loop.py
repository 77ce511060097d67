"""The training loop: `train(cfg, data, on_epoch)` on an `ImageData`, plain PyTorch, no Ray, no MLflow.

`train` calls `on_epoch(metrics, state)` after every epoch; the Tune adapter reports and checkpoints from there,
jobs log to MLflow from there. `state.state_dict()` is a complete checkpoint and `train(..., resume=that_dict)`
carries on from it. "Steps" are optimiser steps throughout (`cfg.steps`, `state.step`); the per-iteration
records of `cfg.log_steps` are "rows".
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..adversarial.attacks import PGD
from ..config import project
from ..data import DeviceLoader, ImageData, ImageSet
from ..runtime import faster_memory_format, keep_freed_memory, pick_device, seed_everything
from .averaging import EMA, Lookahead
from .evaluation import autocast, evaluate, robust_accuracy, sync
from .recipe import TrainConfig, adopt_hyperparameters, build_model, make_optimizer, make_scheduler
from .step_metrics import StepRecorder


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
    epoch_rows: list[dict[str, float]] = field(default_factory=list)  # per-iteration rows of the latest epoch
    # (cfg.log_steps); not checkpointed: reported by then
    ema: EMA | None = None  # cfg.ema_decay
    lookahead: Lookahead | None = None  # cfg.lookahead_steps

    @contextlib.contextmanager
    def averaged(self) -> Iterator[nn.Module]:
        """The model as it is scored: holding the EMA weights inside the block when there is one."""
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext(self.model) as model:
            yield model

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
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **({"lookahead": self.lookahead.state_dict()} if self.lookahead is not None else {}),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.generator.set_state(state["generator"].to("cpu"))
            self.epoch, self.history = int(state["epoch"]), list(state["history"])
            self.step = int(state.get("step", 0))
            for name, average in (("ema", self.ema), ("lookahead", self.lookahead)):
                if average is not None and name in state:
                    average.load_state_dict(state[name])
                elif average is not None:  # turned on for the resumed run: start from the checkpoint's weights
                    average.reset(self.model)
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(f"checkpoint does not match this model/config and cannot be resumed: {e}") from e


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]  # one dict of metrics per epoch
    step_rows: list[dict[str, float]] = field(default_factory=list)  # one dict per iteration, with cfg.log_steps


EpochCallback = Callable[[dict[str, float], TrainState], bool | None]  # True: stop training after this epoch


@dataclass
class _Run:
    """What the loop works with besides the checkpointed state: the device, the data, the batch source."""

    device: torch.device
    memory_format: torch.memory_format
    loader: DeviceLoader
    val_set: ImageSet
    criterion: nn.Module
    total_steps: int
    adversary: PGD | None
    recorder: StepRecorder | None


CPU_FORMAT_TRIAL_STEPS = 400  # a CPU run at least this long first times which memory format trains faster


def _memory_format(cfg: TrainConfig, model: nn.Module, data: ImageData, device: torch.device,
                   total_steps: int) -> torch.memory_format:
    """channels_last on CUDA. On the CPU it is faster for some networks and slower for others (measured here,
    a training step at 1 thread: ResNet 1.17× and airbench_cnn 1.28× faster, mish_cnn 1.33× slower), so a run
    long enough to repay a few seconds times a step of each on a copy of the model and keeps the faster; a short
    run stays contiguous."""
    if not cfg.channels_last or (device.type != "cuda" and total_steps < CPU_FORMAT_TRIAL_STEPS):
        return torch.contiguous_format
    if device.type == "cuda":
        return torch.channels_last
    with torch.random.fork_rng(devices=[]):  # the trial steps draw nothing from the run's random streams
        x = torch.rand(cfg.batch_size, *data.image_shape, device=device)
        y = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)
        copies = {fmt: copy.deepcopy(model).to(memory_format=fmt).train()
                  for fmt in (torch.contiguous_format, torch.channels_last)}

        def step(fmt: torch.memory_format) -> None:
            with autocast(device, cfg.amp):
                loss = nn.functional.cross_entropy(copies[fmt](x.contiguous(memory_format=fmt)).float(), y)
            loss.backward()

        return faster_memory_format(step)


def _setup(cfg: TrainConfig, data: ImageData, resume: dict[str, Any] | None) -> tuple[TrainState, _Run]:
    """The model, optimiser, schedule and data on the device, seeded; the checkpoint `resume` loaded."""
    device = pick_device(cfg.device)
    keep_freed_memory()
    seed_everything(cfg.seed)
    model = build_model(cfg, data).to(device)
    if hasattr(model, "init_from_data"):  # layers fitted from the training images (airbench's whitening stem)
        model.init_from_data(data.train.images)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    loader = DeviceLoader(data.train.to(device), cfg.batch_size, shuffle=True, drop_last=True,
                          augment=cfg.augment(), generator=generator)
    total_epochs, total_steps = cfg.budget(len(loader))
    memory_format = _memory_format(cfg, model, data, device, total_steps)
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, len(loader))
    state = TrainState(project(cfg, TrainConfig), model, optimizer, scheduler, generator, total_epochs=total_epochs,
                       ema=EMA(model, cfg.ema_decay) if cfg.ema_decay else None,
                       lookahead=Lookahead(model, cfg.lookahead_steps, cfg.lookahead_alpha) if cfg.lookahead_steps else None)
    if resume is not None:
        state.load_state_dict(resume)
        state.step = state.step or state.epoch * len(loader)  # checkpoints from before steps were counted
        adopt_hyperparameters(cfg, model, optimizer, scheduler)
    run = _Run(device, memory_format, loader, data.val.to(device),
               nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), total_steps,
               cfg.adversary(model, generator), StepRecorder(model) if cfg.log_steps else None)
    return state, run


def _train_epoch(cfg: TrainConfig, state: TrainState, run: _Run) -> tuple[float, float, int]:
    """One pass over the training batches (fewer when the step budget ends first). Returns the mean training
    loss, the training accuracy (on the augmented, or adversarial, batches) and the images seen."""
    model, optimizer = state.model, state.optimizer
    model.train()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    seen = 0
    for x, y in run.loader:
        if state.step >= run.total_steps:  # a step budget ends part-way through the last epoch
            break
        x = x.contiguous(memory_format=run.memory_format)
        with autocast(run.device, cfg.amp):
            if run.adversary is not None:  # the attack runs in eval mode (BN's running statistics), restores train
                x = run.adversary(x, y).images
            logits = model(x)
            loss = run.criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.scheduler.step()
        state.step += 1
        if state.lookahead is not None:
            state.lookahead.update(model, state.step)
        if state.ema is not None:
            state.ema.update(model)
        if run.recorder is not None:
            run.recorder.record(state.step, loss, logits, y)
        loss_sum += loss.detach() * len(y)  # stays on the device: no sync per step
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    sync(run.device)
    train_loss = loss_sum.item() / max(1, seen)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"training loss became {train_loss} in epoch {state.epoch + 1}; lower lr={cfg.lr}")
    return train_loss, correct.item() / max(1, seen), seen


def _epoch_metrics(cfg: TrainConfig, state: TrainState, run: _Run, train_loss: float, train_acc: float,
                   seen: int, start: float, train_s: float) -> dict[str, float]:
    """The epoch's record: training figures, validation loss and accuracy (and robust accuracy), lr, speed."""
    with state.averaged() as model:
        if len(run.val_set):
            val = evaluate(model, run.val_set, cfg.eval_batch_size, cfg.amp, cfg.tta)
        else:
            val = {"loss": math.nan, "acc": math.nan}
        if cfg.robust_eps and len(run.val_set):
            robust = robust_accuracy(model, run.val_set, cfg)
    so_far = state.history[-1].get("train_s", 0.0) if state.history else 0.0
    metrics = {"epoch": state.epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val["loss"],
               "val_acc": val["acc"], "lr": state.optimizer.param_groups[0]["lr"], "images_per_s": seen / train_s,
               "train_s": so_far + train_s, "threads": torch.get_num_threads(),
               "channels_last": float(run.memory_format == torch.channels_last)}
    if cfg.robust_eps and len(run.val_set):
        metrics["val_robust_acc"] = robust
    metrics["epoch_s"] = time.perf_counter() - start
    return metrics


def train(cfg: TrainConfig, data: ImageData, on_epoch: EpochCallback | None = None,
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train `cfg.model` on `data.train`, evaluating on `data.val` after each epoch (never on `data.test`).

    Metrics per epoch: epoch, train_loss, train_acc (on augmented batches, adversarial ones with
    `cfg.adv_eps_255`), val_loss, val_acc, lr (at the epoch's end), images_per_s (training steps only), epoch_s
    (wall time including evaluation), train_s (training seconds so far, evaluation excluded: the time a
    time-to-accuracy comparison counts), and with a robust radius (`cfg.robust_eps`) val_robust_acc. With
    `cfg.log_steps`, per-iteration rows too (see `library.train.step_metrics`): `state.epoch_rows` in
    `on_epoch`, all of them in the result. `on_epoch` returning True ends training after that epoch.
    """
    state, run = _setup(cfg, data, resume)
    step_rows: list[dict[str, float]] = []
    while state.epoch < state.total_epochs:
        start = time.perf_counter()
        train_loss, train_acc, seen = _train_epoch(cfg, state, run)
        train_s = time.perf_counter() - start
        state.epoch += 1
        state.epoch_rows = run.recorder.flush() if run.recorder is not None else []
        step_rows += state.epoch_rows
        metrics = _epoch_metrics(cfg, state, run, train_loss, train_acc, seen, start, train_s)
        state.history.append(metrics)
        if on_epoch is not None and on_epoch(metrics, state) is True:
            break  # the caller stops here (a sweep's time budget per trial)
    if run.recorder is not None:
        run.recorder.close()
    if state.lookahead is not None:  # the returned model is the slow weights, synchronised one last time
        state.lookahead.update(state.model, state.lookahead.steps)
    if state.ema is not None:  # ... or the average, which validation scored
        state.model.load_state_dict(state.ema.state_dict(), strict=False)
    return TrainResult(state.model, state.history, step_rows)
