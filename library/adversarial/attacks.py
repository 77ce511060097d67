"""Adversarial attacks in L∞, batched, with per-sample early stopping and a budget counted in backward passes.

Every attack takes images in [0, 1] (the registry's and `Backbone`'s models normalise inside; for a bare timm
model wrap it with `with_normalization`), puts the model in eval mode for the attack and restores its mode
after, keeps ‖x' − x‖∞ ≤ ε and x' in [0, 1], and stops working on a sample as soon as it succeeds (when asked
to), so the images still standing get all the compute. The budget is the number of backward passes per sample;
`AttackResult.backward_passes` reports what each sample used.

    attack = PGD(model, eps=8/255, alpha=2/255, steps=10)
    result = attack(x, y)                      # untargeted
    result = attack(x, y, target=target)       # targeted
"""
from __future__ import annotations

import math
from functools import cached_property
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import eval_mode

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Index = torch.Tensor | slice  # which samples of the batch a step works on


class AttackResult:
    """The adversarial images and the passes each cost. The model's verdict on them (`probabilities`,
    `success`) is one more forward pass, made on first use only: a caller that needs just the images (adversarial
    training, a transfer set) does not pay for it."""

    def __init__(self, attack: "Attack", images: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                 backward_passes: torch.Tensor):
        self.images = images  # the adversarial images, B×C×H×W in [0, 1]
        self.backward_passes = backward_passes  # B ints: gradient computations spent on each sample
        self._attack, self._y, self._target = attack, y, target

    @cached_property
    def probabilities(self) -> torch.Tensor:
        """B×K softmax of the model on the final images (in eval mode; the model's mode is restored)."""
        with torch.no_grad(), eval_mode(self._attack.model) as model:
            return model(self.images).softmax(1)

    @cached_property
    def success(self) -> torch.Tensor:
        """B bools: misclassified (untargeted) / classified as the target (targeted)."""
        return self._attack.succeeded(self.probabilities, self._y, self._target)


class Attack:
    """The shared machinery: mode handling, projection, success test, bookkeeping of active samples."""

    def __init__(self, model: nn.Module, eps: float, early_stop: bool = True, confidence: float = 0.0):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model, self.eps, self.early_stop, self.confidence = model, eps, early_stop, confidence

    # -- to implement -------------------------------------------------------------------------------------------
    def run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, state: "_Batch") -> None:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> AttackResult:
        with eval_mode(self.model):
            x = x.detach()
            state = _Batch(self, x, y, target)
            self.run(x, y, target, state)
            return AttackResult(self, state.adv.detach(), y, target, state.passes)

    def project(self, adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.max(adv, x - self.eps), x + self.eps).clamp_(0, 1)

    def succeeded(self, probabilities: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Targeted: the target is the top class (with ≥ `confidence`). Untargeted: a wrong class is the top
        class (with ≥ `confidence`)."""
        top_p, top = probabilities.max(1)
        hit = top == target if target is not None else top != y
        return hit & (top_p >= self.confidence)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Per-sample loss to ascend: cross-entropy of the true class, or minus that of the target."""
        return -F.cross_entropy(logits, target, reduction="none") if target is not None else \
            F.cross_entropy(logits, y, reduction="none")


class _Batch:
    """The attack's working state: current images, which samples are still active, passes spent."""

    def __init__(self, attack: Attack, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None):
        self.attack, self.x, self.y, self.target = attack, x, y, target
        self.adv = x.clone()
        self.passes = torch.zeros(len(x), dtype=torch.long, device=x.device)
        self.active = torch.ones(len(x), dtype=torch.bool, device=x.device)

    def gradient(self, loss_fn: Callable[[torch.Tensor, Index], torch.Tensor]) -> tuple[Index, torch.Tensor, torch.Tensor]:
        """∂ loss / ∂ input for the active samples only (one backward pass each). Returns (index, gradient,
        logits) of the active samples, the index a slice when all are active; `loss_fn(logits, index)` gives
        their per-sample losses."""
        source = self.adv
        if self.active.all():  # a slice, not an index: no gather or scatter of the whole batch every step
            index = slice(None)
            inputs = source.detach().requires_grad_(True)  # an alias: the images change only after the backward
        else:
            index = self.active.nonzero().flatten()
            inputs = source[index].detach().requires_grad_(True)
        logits = self.attack.model(inputs)
        grad, = torch.autograd.grad(loss_fn(logits, index).sum(), inputs)
        self.passes[index] += 1
        return index, grad, logits.detach()

    def retire_successes(self, index: Index) -> None:
        """With early stopping, drop the samples (of `index`) whose current images already succeed."""
        if isinstance(index, slice):
            index = torch.arange(len(self.x), device=self.x.device)[index]
        if not self.attack.early_stop or len(index) == 0:
            return
        with torch.no_grad():
            probabilities = self.attack.model(self.adv[index]).softmax(1)
        target = self.target[index] if self.target is not None else None
        done = self.attack.succeeded(probabilities, self.y[index], target)
        self.active[index[done]] = False


def _labels(state: _Batch, index: Index):
    return state.y[index], (state.target[index] if state.target is not None else None)


class FGSM(Attack):
    """One signed-gradient step of size ε (Goodfellow et al., 2015). Budget: one backward pass."""

    def run(self, x, y, target, state):
        index, grad, _ = state.gradient(lambda logits, i: self.loss(logits, *_labels(state, i)))
        state.adv[index] = self.project(state.adv[index] + self.eps * grad.sign(), x[index])


class PGD(Attack):
    """L∞ projected gradient descent (Madry et al., 2018): `steps` signed steps of `alpha`, projected onto the
    ε-ball around x and [0, 1]; optionally from a uniform random start, with `restarts` (each restart spends the
    budget again on the samples not yet broken). Budget: steps × (1 + restarts) backward passes."""

    def __init__(self, model, eps, alpha: float, steps: int, random_start: bool = True, restarts: int = 0,
                 early_stop: bool = True, confidence: float = 0.0, seed: int = 0,
                 generator: torch.Generator | None = None):
        super().__init__(model, eps, early_stop, confidence)
        self.alpha, self.steps, self.random_start, self.restarts = alpha, steps, random_start, restarts
        self.seed, self.generator = seed, generator  # a generator: a new start every call (adversarial training)

    def run(self, x, y, target, state):
        generator = self.generator or torch.Generator(device=x.device).manual_seed(self.seed)
        best = x.clone()
        for restart in range(self.restarts + 1):
            state.active = ~self._broken(best, y, target) if restart else torch.ones_like(state.active)
            if not state.active.any():
                break
            state.adv = x.clone()
            if self.random_start:
                noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
                state.adv = self.project(x + self.eps * noise, x)
            for _ in range(self.steps):
                if not state.active.any():
                    break
                index, grad, logits = state.gradient(lambda lg, i: self.loss(lg, *_labels(state, i)))
                state.adv[index] = self.project(state.adv[index] + self.alpha * grad.sign(), x[index])
                state.retire_successes(index)
            if self.restarts == 0:
                return  # nothing to choose between
            improved = self._broken(state.adv, y, target) | (restart == 0)
            best[improved] = state.adv[improved]
        state.adv = best

    def _broken(self, images, y, target) -> torch.Tensor:
        with torch.no_grad():
            return self.succeeded(self.model(images).softmax(1), y, target)


class IterativeFGSM(Attack):
    """D3: x ← x + step · sign(∇ CE(x, y)) until some wrong class has probability ≥ `confidence` (per sample),
    at most `max_steps` steps; unbounded unless `eps` is finite. Budget: max_steps backward passes."""

    def __init__(self, model, step: float = 1 / 255, confidence: float = 0.99, max_steps: int = 200,
                 eps: float = math.inf, early_stop: bool = True):
        super().__init__(model, eps, early_stop=early_stop, confidence=confidence)
        self.step, self.max_steps = step, max_steps

    def run(self, x, y, target, state):
        state.retire_successes(torch.arange(len(x), device=x.device))  # already there: nothing to do
        for _ in range(self.max_steps):
            if not state.active.any():
                break
            index, grad, _ = state.gradient(lambda lg, i: self.loss(lg, *_labels(state, i)))
            state.adv[index] = self.project(state.adv[index] + self.step * grad.sign(), x[index])
            state.retire_successes(index)


class ProbabilityAscent(Attack):
    """D1, the seed's targeted attack: X' ← X' + λ ∂P(y_fool | X')/∂X', clipped to X ± ε and [0, 1], until the
    target is the top class (with ≥ `confidence`) or `steps` run out. Budget: steps backward passes."""

    def __init__(self, model, eps: float, lr: float = 1.0, steps: int = 100, confidence: float = 0.0):
        super().__init__(model, eps, early_stop=True, confidence=confidence)
        self.lr, self.steps = lr, steps

    def run(self, x, y, target, state):
        if target is None:
            raise ValueError("ProbabilityAscent is a targeted attack: pass target=")
        for _ in range(self.steps):
            if not state.active.any():
                break
            index, grad, _ = state.gradient(lambda lg, i: lg.softmax(1).gather(1, target[i, None])[:, 0])
            state.adv[index] = self.project(state.adv[index] + self.lr * grad, x[index])
            state.retire_successes(index)


class MomentumMargin(Attack):
    """D7's improved attack at the same budget: momentum on the normalised gradient (MI-FGSM, Dong et al., 2018)
    of the logit margin (Carlini & Wagner's loss, which does not saturate the way softmax probabilities do), with
    a cosine step-size schedule from 4ε/steps down to 0 (2ε/steps on average). Untargeted: push the best wrong logit over the true
    one; targeted: the target's over the best other. Budget: steps backward passes."""

    def __init__(self, model, eps: float, steps: int = 20, decay: float = 0.9, early_stop: bool = True,
                 confidence: float = 0.0):
        super().__init__(model, eps, early_stop, confidence)
        self.steps, self.decay = steps, decay

    def margin(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        chosen = target if target is not None else y
        own = logits.gather(1, chosen[:, None])[:, 0]
        others = logits.masked_fill(F.one_hot(chosen, logits.shape[1]).bool(), -math.inf).amax(1)
        return own - others if target is not None else others - own

    def run(self, x, y, target, state):
        velocity = torch.zeros_like(x)
        for t in range(self.steps):
            if not state.active.any():
                break
            step = 4 * self.eps / self.steps * 0.5 * (1 + math.cos(math.pi * t / self.steps))
            index, grad, _ = state.gradient(lambda lg, i: self.margin(lg, *_labels(state, i)))
            grad = grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            velocity[index] = self.decay * velocity[index] + grad
            state.adv[index] = self.project(state.adv[index] + step * velocity[index].sign(), x[index])
            state.retire_successes(index)


class EOT(nn.Module):
    """Expectation over transformation (Athalye et al., 2018) as a model wrapper: the average logits over
    `samples` random transformations of the input, so any attack on it optimises for robustness to them."""

    def __init__(self, model: nn.Module, transforms: list[Transform], samples: int = 8, seed: int = 0):
        super().__init__()
        self.model, self.transforms, self.samples = model, transforms, samples
        self.generator = torch.Generator().manual_seed(seed)
        # take the wrapped model's mode: a new Module is in training mode, and an attack that restores the
        # wrapper's mode would otherwise leave the wrapped model training (BatchNorm on batch statistics)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for _ in range(self.samples):
            transform = self.transforms[int(torch.randint(len(self.transforms), (1,), generator=self.generator))]
            outputs.append(self.model(transform(x, self.generator)))
        return torch.stack(outputs).mean(0)
