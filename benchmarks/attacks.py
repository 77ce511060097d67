"""Attack speed and sweep work on the same CPU, model and images.

    CV_DATA_ROOT=~/.cache/shared-data python benchmarks/attacks.py [--model=registered:mnist_a] [--images=512]

(1) Our batched PGD (no random start, no early stopping: the same computation as torchattacks') against
torchattacks' PGD and against a per-image loop of ours, images/s, interleaved rounds, medians (goal: ≥ 1.0× the
speed of torchattacks). (2) An ε-sweep with robust flags (and per-sample early stopping) against independent
attacks at every ε, each run for its whole budget on every correctly classified image: backward passes (goal
≤ 0.5× the work); and the bisection sweep (`--search=bisect` of jobs/eps_sweep.py) on the same grid, with how
far its curve is from the ascending one. torchattacks is optional: without it that row is skipped.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_name, interleave, save  # noqa: E402
from library import model_store, tracking  # noqa: E402
from library.adversarial.attacks import PGD  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config as BaseConfig  # noqa: E402
from library.data.options import DataOptions, load_data  # noqa: E402
from library.adversarial.registry import AttackSpec  # noqa: E402
from library.adversarial.robustness import bisection_sweep, independent_work, sweep  # noqa: E402
from library.runtime import pick_device  # noqa: E402


@dataclass(frozen=True)
class Config(BaseConfig):
    model: str = "registered:mnist_a"  # see library.model_store.load_model_spec
    dataset: str = "mnist"
    images: int = 512
    steps: int = 10
    eps_255: float = 32.0  # PGD's ε for the speed comparison (MNIST models need large ε)
    loop_images: int = 64  # the per-image loop is slow: time it on fewer images, report images/s
    sweep_eps_255: tuple[float, ...] = (4, 8, 16, 32, 64, 96)
    rounds: int = 3


def main(cfg: Config) -> None:
    device = pick_device("auto")
    tracking.connect()
    data = load_data(DataOptions(dataset=cfg.dataset, val_size=0, test_size=cfg.images))
    x, y = data.test.images.float().div(255).to(device), data.test.labels.to(device)
    model = model_store.load_model_spec(cfg.model, data.num_classes, data.image_shape[0]).to(device).eval()
    eps = cfg.eps_255 / 255
    ours = PGD(model, eps, alpha=eps / 4, steps=cfg.steps, random_start=False, early_stop=False)

    def batched() -> int:
        ours(x, y)
        return len(x)

    def per_image() -> int:
        for i in range(cfg.loop_images):
            ours(x[i:i + 1], y[i:i + 1])
        return cfg.loop_images

    contenders = {"ours_batched": batched, "ours_per_image_loop": per_image}
    try:
        import torchattacks

        theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=cfg.steps, random_start=False)
        contenders["torchattacks"] = lambda: len(theirs(x, y))
    except ImportError:
        print("torchattacks is not installed: its row is skipped")
    speed = interleave(contenders, device, cfg.rounds)
    spec = AttackSpec("pgd", steps=cfg.steps)
    grid = [e / 255 for e in cfg.sweep_eps_255]
    rows, _ = sweep(model, spec, x, y, grid)
    flagged = sum(r["backward_passes"] for r in rows)
    independent = independent_work(model, spec, x, y, grid)
    bisected, _ = bisection_sweep(model, spec, x, y, grid)
    bisected_work = sum(r["backward_passes"] for r in bisected)
    result = {"device": device_name(device), "model": cfg.model, "images": len(x), "steps": cfg.steps,
              "eps_255": cfg.eps_255, "pgd_speed": speed,
              "sweep_work": {"eps_255": list(cfg.sweep_eps_255), "flagged_backward_passes": flagged,
                             "independent_backward_passes": independent, "ratio": round(flagged / independent, 3),
                             "goal": 0.5, "robust_acc": [r["standing"] / r["n"] for r in rows],
                             "bisection_backward_passes": bisected_work,
                             "bisection_ratio": round(bisected_work / independent, 3),
                             "bisection_robust_acc": [r["standing"] / r["n"] for r in bisected]}}
    if "torchattacks" in speed:
        result["batched_vs_torchattacks"] = round(speed["ours_batched"]["images_per_s"] /
                                                  speed["torchattacks"]["images_per_s"], 3)
    result["batched_vs_loop"] = round(speed["ours_batched"]["images_per_s"] /
                                      speed["ours_per_image_loop"]["images_per_s"], 1)
    for name, s in speed.items():
        print(f"{name}: {s['images_per_s']:.0f} images/s")
    print(f"ε-sweep work with robust flags / independent: {flagged} / {independent} = {flagged / independent:.3f}")
    print(f"bisection sweep / independent: {bisected_work} / {independent} = {bisected_work / independent:.3f}; "
          f"robust accuracy ascending {result['sweep_work']['robust_acc']}, bisected "
          f"{result['sweep_work']['bisection_robust_acc']}")
    print(f"wrote {save('attacks', result)}")


if __name__ == "__main__":
    run_job(main, Config)
