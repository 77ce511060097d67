"""Time to accuracy on the CPU: the best configuration `jobs/tune_cnn.py` found against airbench94.

Both contenders get the same CPU-time budgets (CPU seconds of this process, all threads: training only, the
evaluation after each point untimed) on the same real CIFAR-10 training images, and are tested on the same test
images. A point of a curve is a whole run sized to its budget: its schedule runs to completion within the time
it is given, the way either recipe would be used with that much time. The budgets are interleaved (airbench 25%,
ours 25%, airbench 50%, ...), so a busy machine slows both alike.

    pip install -e ".[bench]"
    python benchmarks/vs_airbench.py                          # the newest tune_cnn sweep in the MLflow store
    python benchmarks/vs_airbench.py --config=run:<parent id> --budget_cpu_s=1200
    python benchmarks/vs_airbench.py --config=best.json       # a TrainConfig as JSON (the sweep's best_config.json)

airbench94 is the PyPI `airbench` package (0.1.8): its network (`ConvGroup`, `BatchNorm`, `Conv` with its dirac
initialisation), loader (`CifarLoader`: alternating flips, reflect-padded translation), whitening, Lookahead,
hyper-parameters and TTA evaluation are used as shipped. The package hard-codes CUDA and float16, so this file
adapts only device, precision and timing: `make_net` is `make_net94` without `.half().cuda()` (float32 on the
CPU, contiguous memory like ours), the loader is given our CIFAR-10 tensors in its own `train.pt`/`test.pt`
format and made float32, and `run` is `airbench.utils.train`'s loop with CUDA events replaced by CPU time and
the step count set by the budget instead of 9.9 epochs; the whitening bias trains for the first 3/9.9 of the
steps, as 3 of 9.9 epochs do in the package.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import device_name, preload_torch_dynamo, save  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config as BaseConfig, ConfigError  # noqa: E402
from library.data import ImageData, load_cifar10  # noqa: E402
from library.train.evaluation import evaluate  # noqa: E402
from library.train.loop import train  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402


@dataclass(frozen=True)
class Config(BaseConfig):
    config: str = ""  # the project's contender: run:<tune_cnn parent run id> (its best_config.json), a JSON file
    # of TrainConfig fields, or "" = the newest tune_cnn sweep in the MLflow store that has one
    data_root: str = ""  # default: $CV_DATA_ROOT
    budget_cpu_s: float = 600.0  # CPU seconds (all threads) of training at the largest point
    fractions: tuple[float, ...] = (0.25, 0.5, 1.0)  # the points of each curve, as fractions of the budget
    calibration_steps: int = 6  # steps of batch 1,024 (airbench) or their images' worth (ours), then twice as
    # many, timed to size the runs (the difference is the cost per step, the rest set-up)
    test_images: int = 2500  # a seeded sample of the test set (TTA costs up to 6 forward passes an image)
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.require(budget_cpu_s=self.budget_cpu_s > 0, calibration_steps=self.calibration_steps >= 2,
                     test_images=self.test_images >= 1,
                     fractions=bool(self.fractions) and all(0 < f <= 1 for f in self.fractions))


@dataclass
class Point:
    """One run of one contender: its budget, the steps that filled it, what it cost and what it reached."""

    contender: str
    budget_cpu_s: float
    steps: int
    images: int
    cpu_s: float
    wall_s: float
    test_acc: float


def cpu_timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn's result, the CPU seconds (all threads) and the wall seconds it took."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


# ---- airbench94, adapted to the CPU -------------------------------------------------------------------------

class Airbench94:
    """The package's recipe on the CPU in float32; `run(steps)` trains from scratch and returns test accuracy."""

    name = "airbench94"

    def __init__(self, data: ImageData, workdir: Path):
        import airbench.utils as ab  # the reference: pip install -e ".[bench]"

        self.ab = ab
        for split, part in (("train", data.train), ("test", data.test)):  # our tensors in its on-disk format
            torch.save({"images": part.images.permute(0, 2, 3, 1).contiguous(), "labels": part.labels,
                        "classes": list(data.classes)}, workdir / f"{split}.pt")
        self.workdir = workdir
        self.batch_size = 1024

    def make_net(self) -> nn.Module:
        """airbench.lib_airbench94.make_net94 without `.half().cuda()` and channels_last."""
        from airbench.lib_airbench94 import BatchNorm, Conv, ConvGroup, Flatten, Mul, hyp

        widths, momentum = hyp["net"]["widths"], hyp["net"]["batchnorm_momentum"]
        whiten_width = 2 * 3 * 2 ** 2
        net = nn.Sequential(
            Conv(3, whiten_width, 2, padding=0, bias=True), nn.GELU(),
            ConvGroup(whiten_width, widths["block1"], momentum), ConvGroup(widths["block1"], widths["block2"], momentum),
            ConvGroup(widths["block2"], widths["block3"], momentum), nn.MaxPool2d(3), Flatten(),
            nn.Linear(widths["block3"], 10, bias=False), Mul(hyp["net"]["scaling_factor"]))
        net[0].weight.requires_grad = False
        assert not any(isinstance(m, BatchNorm) and m.weight.requires_grad for m in net.modules())
        return net

    def loader(self, train: bool):
        from airbench.lib_airbench94 import hyp

        kw = {"batch_size": self.batch_size, "aug": hyp["aug"], "altflip": True} if train else {"batch_size": 2000}
        loader = self.ab.CifarLoader(str(self.workdir), train=train, gpu="cpu", **kw)
        loader.images = loader.images.float()  # the package keeps float16 images for its GPU
        return loader

    def train(self, steps: int) -> nn.Module:
        """`airbench.utils.train(...)` with train94's defaults, for `steps` steps, timed by the caller."""
        from airbench.lib_airbench94 import hyp

        opt, ab = hyp["opt"], self.ab
        train_loader = self.loader(train=True)
        momentum, batch_size = opt["momentum"], train_loader.batch_size
        kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
        lr = opt["lr"] / kilostep_scale
        wd = opt["weight_decay"] * batch_size / kilostep_scale
        lr_biases = lr * opt["bias_scaler"]
        loss_fn = nn.CrossEntropyLoss(label_smoothing=opt["label_smoothing"], reduction="none")
        model = self.make_net()
        norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
        other_params = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
        optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                                     dict(params=other_params, lr=lr, weight_decay=wd / lr)],
                                    momentum=momentum, nesterov=True)
        schedule = _triangle(steps, start=0.2, end=0.07, peak=0.23)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: schedule[i])
        alpha_schedule = 0.95 ** 5 * (torch.arange(steps + 1) / steps) ** 3
        lookahead = ab.LookaheadState(model)
        ab.init_whitening_conv(model[0], train_loader.normalize(train_loader.images[:5000]))
        whiten_bias_steps = round(steps * opt["whiten_bias_epochs"] / opt["train_epochs"])
        current = 0
        while current < steps:
            model.train()
            for inputs, labels in train_loader:
                model[0].bias.requires_grad = current < whiten_bias_steps
                loss = loss_fn(model(inputs), labels).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                current += 1
                if current % 5 == 0:
                    lookahead.update(model, decay=alpha_schedule[current].item())
                if current >= steps:
                    lookahead.update(model, decay=1.0)
                    break
        return model

    def test(self, model: nn.Module) -> float:
        from airbench.lib_airbench94 import hyp

        return self.ab.evaluate(model, self.loader(train=False), tta_level=hyp["net"]["tta_level"])

    def images(self, steps: int) -> int:
        return steps * self.batch_size


def _triangle(steps: int, start: float, end: float, peak: float) -> torch.Tensor:
    """airbench.utils.train's `triangle` (a nested function there): linear from `start` up to 1 at `peak`
    of the way, then down to `end`."""
    xp = torch.tensor([0, int(peak * steps), steps])
    fp = torch.tensor([start, 1, end])
    x = torch.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1]).clamp_min(1)
    b = fp[:-1] - (m * xp[:-1])
    indices = torch.clamp(torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1, 0, len(m) - 1)
    return m[indices] * x + b[indices]


# ---- the project's configuration ---------------------------------------------------------------------------

class Project:
    """A `TrainConfig` from a sweep, its run sized by steps; the schedule's shape (warm-up as a fraction of the
    run) kept from the trial it was found in."""

    def __init__(self, cfg: TrainConfig, data: ImageData, label: str):
        self.cfg, self.name, self.batch_size = cfg, label, cfg.batch_size
        self.data = dataclasses.replace(data, val=data.val.subset(torch.arange(0)))  # no validation: only test

    def run_config(self, steps: int) -> TrainConfig:
        per_epoch = len(self.data.train) // self.cfg.batch_size
        warmup = self.cfg.warmup_epochs / self.cfg.epochs * steps / per_epoch  # the same fraction of the run
        return dataclasses.replace(self.cfg, steps=steps, epochs=max(1, math.ceil(steps / per_epoch)),
                                   warmup_epochs=warmup, seed=self.cfg.seed, device="cpu")

    def train(self, steps: int) -> nn.Module:
        return train(self.run_config(steps), self.data).model

    def test(self, model: nn.Module) -> float:
        return evaluate(model, self.data.test, self.cfg.eval_batch_size, tta=self.cfg.tta)["acc"]

    def images(self, steps: int) -> int:
        return steps * self.cfg.batch_size


def load_contender(spec: str) -> tuple[TrainConfig, str]:
    """The project's configuration named by `--config`, and where it came from."""
    if spec and not spec.startswith("run:"):
        fields = json.loads(Path(spec).read_text())
        return TrainConfig(**{k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__}), spec
    import mlflow

    from library import tracking

    tracking.connect()
    client = mlflow.MlflowClient()
    candidates = [spec.removeprefix("run:")] if spec else [  # sweeps that concluded, newest first
        r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                                  filter_string="tags.sweep_kind = 'sweep' and tags.complete = 'true'",
                                                  order_by=["start_time DESC"])]
    for run_id in candidates:
        if any(a.path == "best_config.json" for a in client.list_artifacts(run_id)):
            path = client.download_artifacts(run_id, "best_config.json", tempfile.mkdtemp())
            fields = json.loads(Path(path).read_text())
            break
    else:
        raise ConfigError(f"no tune_cnn sweep with a best_config.json in the MLflow store ({tracking.tracking_uri()})"
                          f"{' for ' + spec if spec else ''}; run python jobs/tune_cnn.py first, or pass "
                          "--config=<a JSON file of TrainConfig fields>")
    return TrainConfig(**{k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__}), f"run:{run_id}"


# ---- the comparison ----------------------------------------------------------------------------------------

@dataclass
class Rate:
    """A contender's cost model from two timed runs: CPU seconds = overhead + steps / per_s."""

    per_s: float  # steps per CPU second, set-up excluded
    overhead: float  # CPU seconds of set-up (the whitening, the loader's first pass, ...)

    def steps(self, budget: float) -> int:
        return max(2, int((budget - self.overhead) * self.per_s))


def calibrate(contender, steps: int) -> Rate:
    """Two short runs, of `steps` and 2 × `steps` steps: their difference is the per-step cost, the rest set-up."""
    (_, short, _), (_, long, _) = (cpu_timed(lambda n=n: contender.train(n)) for n in (steps, 2 * steps))
    per_s = steps / max(long - short, 1e-3)
    return Rate(per_s, max(0.0, short - steps / per_s))


def measure(contender, budget: float, rate: Rate) -> Point:
    steps = rate.steps(budget)
    model, cpu_s, wall_s = cpu_timed(lambda: contender.train(steps))
    acc = contender.test(model)
    point = Point(contender.name, budget, steps, contender.images(steps), cpu_s, wall_s, acc)
    print(f"{point.contender:<12} budget {budget:>6.0f} CPU-s: {steps:>4} steps ({point.images:>7} images) in "
          f"{cpu_s:>6.0f} CPU-s ({wall_s:>5.0f} s wall): test accuracy {acc:.4f}", flush=True)
    return point


def accuracy_at(points: list[Point], cpu_s: float) -> float:
    """A contender's test accuracy at `cpu_s`, interpolated linearly between its measured points."""
    pts = sorted((p.cpu_s, p.test_acc) for p in points)
    if cpu_s <= pts[0][0]:
        return pts[0][1]
    for (t0, a0), (t1, a1) in zip(pts, pts[1:]):
        if cpu_s <= t1:
            return a0 + (a1 - a0) * (cpu_s - t0) / (t1 - t0)
    return pts[-1][1]


def time_to(points: list[Point], accuracy: float) -> float | None:
    """CPU seconds a contender needs to reach `accuracy`, interpolated; None when it never does."""
    pts = sorted((p.cpu_s, p.test_acc) for p in points)
    if pts[0][1] >= accuracy:
        return pts[0][0]
    for (t0, a0), (t1, a1) in zip(pts, pts[1:]):
        if a1 >= accuracy > a0:
            return t0 + (t1 - t0) * (accuracy - a0) / (a1 - a0)
    return None


def summarize(points: list[Point], names: list[str]) -> dict[str, Any]:
    """Both contenders at the most CPU time both were measured at (the other interpolated), and the time each
    needs to reach airbench94's best accuracy."""
    airbench, ours = ([p for p in points if p.contender == name] for name in names)
    budget = min(max(p.cpu_s for p in airbench), max(p.cpu_s for p in ours))
    target = max(p.test_acc for p in airbench)
    summary = {"at_cpu_s": budget, "airbench94_acc": accuracy_at(airbench, budget),
               "ours_acc": accuracy_at(ours, budget), "airbench94_best_acc": target,
               "ours_cpu_s_to_airbench94_best": time_to(ours, target), "airbench94_cpu_s_to_it": time_to(airbench, target)}
    return summary | {"goal_met": summary["ours_acc"] >= summary["airbench94_acc"]}


def curves_figure(points: list[Point], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(p.contender for p in points):
        mine = sorted((p for p in points if p.contender == name), key=lambda p: p.cpu_s)
        ax.plot([p.cpu_s for p in mine], [p.test_acc for p in mine], marker="o", label=name)
    ax.set_xlabel("training CPU seconds (all threads)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def main(cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    preload_torch_dynamo()
    ours_cfg, source = load_contender(cfg.config)
    data = load_cifar10(cfg.data_root or None, val_size=0).limit(test=cfg.test_images, seed=cfg.seed)
    with tempfile.TemporaryDirectory() as workdir:
        contenders = [Airbench94(data, Path(workdir)), Project(ours_cfg, data, f"ours ({ours_cfg.model})")]
        images = cfg.calibration_steps * 1024
        rates = {c.name: calibrate(c, max(2, images // c.batch_size)) for c in contenders}
        print("calibration: " + ", ".join(f"{n} {r.per_s:.3f} steps per CPU-s after {r.overhead:.0f} CPU-s of set-up"
                                          for n, r in rates.items()), flush=True)
        points = [measure(c, f * cfg.budget_cpu_s, rates[c.name]) for f in sorted(cfg.fractions) for c in contenders]
    summary = summarize(points, [c.name for c in contenders])
    device = device_name(torch.device("cpu"))
    result = {"benchmark": "vs_airbench", "device": device, "config": vars(cfg), "ours": {"source": source,
              "train_config": dataclasses.asdict(ours_cfg)}, "points": [vars(p) for p in points], "summary": summary}
    path = save("vs_airbench", result)
    fig = curves_figure(points, f"CIFAR-10 test accuracy ({cfg.test_images} images) vs training CPU time, {device}")
    fig.savefig(path.with_suffix(".png"), dpi=120)
    print(f"at {summary['at_cpu_s']:.0f} CPU-s: ours {summary['ours_acc']:.4f}, airbench94 "
          f"{summary['airbench94_acc']:.4f} (goal ours >= airbench94: {'met' if summary['goal_met'] else 'not met'}); "
          f"saved {path} and its .png")
    return result


if __name__ == "__main__":
    run_job(main, Config)
