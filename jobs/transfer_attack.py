"""Adversarial images that transfer (D3, D4): iterative FGSM on a source model until a wrong class has ≥ 99%
confidence, two images per class, then every model's accuracy on every model's adversarial images.

    python jobs/transfer_attack.py --models=[run:<A1 run id>,run:<A5 run id>,registered:<name>]
    python jobs/transfer_attack.py --smoke-test

Models are CIFAR-10 classifiers named as in jobs/eps_sweep.py (registered:, run:, init:). For each source model,
its adversarial images are generated as one Ray task (all pairs at once, batched, each image stopping when it
reaches the confidence); the driver evaluates the transfer matrix. MLflow: d3_<source>.png (the pairs: original
and adversarial, with class and confidence), transfer_matrix.csv/png (rows: source of the images, columns: model
evaluated, cells: accuracy on those images), and per source the steps and ‖δ‖∞ used.
"""
from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from library import model_store, tracking  # noqa: E402
from library.adversarial.attacks import IterativeFGSM  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import ConfigError  # noqa: E402
from library.data.options import DataOptions, load_data  # noqa: E402
from library.plots import map_grid_figure  # noqa: E402
from library.cluster import ray_init, remote_task  # noqa: E402


@dataclass(frozen=True)
class JobConfig(DataOptions):
    models: tuple[str, ...] = ()  # at least two: registered:<name>, run:<run id> or init:<registry name>
    per_class: int = 2  # test images per class, correctly classified by the source model
    confidence: float = 0.99  # stop once a wrong class has this probability
    step_255: float = 1.0  # the signed-gradient step, in 1/255
    max_steps: int = 300  # the most steps per image; it stops sooner once confidence is reached
    cpus_per_task: float = 1.0  # Ray CPUs each task reserves; its torch threads follow them
    ray_address: str = ""  # default: $RAY_ADDRESS, else a running cluster on this machine, else a new local Ray
    experiment: str = "transfer_attack"  # MLflow experiment
    smoke_test: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.confidence < 1:
            raise ConfigError("confidence must be in (0, 1)")


SMOKE = {"models": ["init:mish_cnn", "init:mish_cnn_bn"], "val_size": 100, "per_class": 1, "max_steps": 5, "confidence": 0.5,
         "experiment": "transfer_attack_smoke"}


def pick_images(model, x: torch.Tensor, y: torch.Tensor, classes: int, per_class: int) -> torch.Tensor:
    """Indices of the first `per_class` test images of each class that `model` gets right (fewer if none)."""
    with torch.no_grad():
        right = model(x).argmax(1) == y
    return torch.cat([torch.nonzero(right & (y == k)).flatten()[:per_class] for k in range(classes)])


def generate(model, x, y, step: float, confidence: float, max_steps: int):
    """One Ray task: iterative FGSM on `model` for the whole batch."""
    result = IterativeFGSM(model, step=step, confidence=confidence, max_steps=max_steps)(x, y)
    return result.images, result.success, result.backward_passes, result.probabilities


def pairs_figure(x, adv, y, probabilities, classes: tuple[str, ...], title: str) -> Figure:
    rows = []
    for i in range(len(x)):
        p, k = probabilities[i].max(0)
        rows.append((classes[int(y[i])], [("original", x[i].permute(1, 2, 0).numpy()),
                                          (f"{classes[int(k)]} {float(p):.3f}", adv[i].permute(1, 2, 0).numpy())]))
    half = (len(rows) + 1) // 2  # two columns of pairs keep 20 pairs readable
    merged = [(a[0] + " | " + b[0], a[1] + b[1]) for a, b in zip(rows[:half], rows[half:] + [("", [])] * (2 * half - len(rows)))]
    return map_grid_figure(merged, title)


def matrix_figure(matrix: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(2 + 1.2 * len(matrix.columns), 1.5 + 0.8 * len(matrix)))
    ax = fig.add_subplot()
    ax.imshow(matrix.values, cmap="RdYlGn", vmin=0, vmax=1)
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=8)
    for i in range(len(matrix)):
        for j in range(len(matrix.columns)):
            ax.text(j, i, f"{matrix.values[i, j]:.2f}", ha="center", va="center")
    ax.set_xlabel("model evaluated")
    ax.set_ylabel("adversarial images made on")
    ax.set_title("accuracy on transferred adversarial images")
    fig.tight_layout()
    return fig


def main(cfg: JobConfig) -> dict:
    import ray

    if len(cfg.models) < 2:
        raise ConfigError("a transfer matrix needs at least two --models=[...] (registered:, run: or init:)")
    uri = tracking.connect()
    data = load_data(cfg)
    x, y = data.test.images.float().div(255), data.test.labels
    models = {spec: model_store.load_model_spec(spec, data.num_classes, data.image_shape[0]) for spec in cfg.models}
    ray_init(cfg.ray_address)
    task = remote_task(generate, cfg.cpus_per_task)
    chosen = {name: pick_images(m, x, y, data.num_classes, cfg.per_class) for name, m in models.items()}
    refs = {name: task.remote(m, x[chosen[name]], y[chosen[name]], cfg.step_255 / 255, cfg.confidence, cfg.max_steps)
            for name, m in models.items()}
    with tracking.start_run(cfg.experiment, run_name="transfer_attack", config=cfg) as run:
        matrix = pd.DataFrame(index=list(models), columns=list(models), dtype=float)
        for i, (source, ref) in enumerate(refs.items()):
            adv, success, passes, probabilities = ray.get(ref)
            index = chosen[source]
            if len(index) == 0:
                print(f"{source}: classifies none of the test images correctly; nothing to attack")
                continue
            linf = (adv - x[index]).abs().flatten(1).amax(1)
            mlflow.log_metrics({f"{i}.reached_confidence": float(success.float().mean()),
                                f"{i}.mean_steps": float(passes.float().mean()), f"{i}.mean_linf_255": float(linf.mean() * 255)})
            mlflow.log_figure(pairs_figure(x[index], adv, y[index], probabilities, data.classes,
                                           f"D3: made on {source} (≥ {cfg.confidence:.0%} wrong-class confidence)"),
                              f"d3_{i}.png")
            with torch.no_grad():
                for target_name, target in models.items():
                    matrix.loc[source, target_name] = float((target(adv).argmax(1) == y[index]).float().mean())
            print(f"{source}: {int(success.sum())}/{len(index)} images reached {cfg.confidence:.0%}, mean "
                  f"{float(passes.float().mean()):.0f} steps, mean ‖δ‖∞ = {float(linf.mean() * 255):.1f}/255")
        mlflow.log_text(matrix.to_csv(), "transfer_matrix.csv")
        mlflow.log_figure(matrix_figure(matrix), "transfer_matrix.png")
        print("\nD4: accuracy of each model (columns) on the adversarial images of each source (rows):\n"
              + matrix.round(3).to_string())
    print(f"MLflow run {run.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return {"run_id": run.info.run_id, "matrix": matrix.to_dict()}


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
