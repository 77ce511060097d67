"""Targeted adversarial images for a pretrained ImageNet classifier (D1, D2, D7, D8, D9).

    python jobs/attack_images.py     # D1, D2, D8, D9 on the catalog's photos in <data root>/images (README, Data)
    python jobs/attack_images.py --images=[../shared/data/images/peppers.png]     # → space shuttle and 3 more
    python jobs/attack_images.py --images=[a.jpg,b.jpg] --targets=[812,76] --labels=[945,263] --eps_255=4
    python jobs/attack_images.py --images=[peppers.png] --start=../shared/data/images/n02113023_Pembroke.JPEG
    python jobs/attack_images.py --smoke-test

D1: the seed's attack, X' ← X' + λ ∂P(target|X')/∂X' clipped to X ± ε, and D7's momentum/margin attack at the
same budget; the 4×3 figure per attack (original with class and probability, the noise amplified to the full
range, the adversarial image with class and probability). D2: each adversarial image flipped, cropped to 80%,
rotated 30° and turned grey, attacked without and with EOT (expectation over those transformations): does the
target survive? D8: class maximisation (tarantula 76, tiger cat 282 by default) from `--start` (the seed's
corgi; a grey image when not given), with the top-5 probabilities. D9: feature inversion of `--start` at the
first, middle and last convolution, from noise. Images are attacked in pixel space at the model's input size
(its normalisation inside). Each attack, D8 and D9 is one Ray task (on a GPU when the cluster has one); the
driver logs the figures and tables as they come back. The same D8/D9 against CIFAR models, robust and standard
(D10): jobs/gradient_images.py.
"""
from __future__ import annotations

import gc
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from library import tracking  # noqa: E402
from library.adversarial.registry import AttackSpec  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config, ConfigError, override  # noqa: E402
from library.pretrained.backbones import LITE0, BackboneSpec, class_names  # noqa: E402
from library.data.photos import CATALOG_LABELS, CATALOG_PHOTOS, CORGI, catalog_photos, load_images  # noqa: E402
from library.adversarial.transforms import D2_TRANSFORMS  # noqa: E402
from library.plots import map_grid_figure  # noqa: E402
from library.cluster import ray_init, remote_task  # noqa: E402
from library.runtime import pick_device  # noqa: E402
from library.adversarial.synthesis import early_middle_late_layers, invert_features, maximise_class  # noqa: E402


@dataclass(frozen=True)
class JobConfig(Config):
    backbone: str = LITE0  # a timm ImageNet classifier, optionally @weights
    images: tuple[str, ...] = ()  # one image: attacked toward every target; else one target per image. None
    # given: the catalog's four photos in <data root>/images, with their --labels and the corgi as --start
    targets: tuple[int, ...] = (812, 76, 282, 263)  # space shuttle, tarantula, tiger cat, Pembroke corgi
    labels: tuple[int, ...] = ()  # each image's true ImageNet class: D1 asks that the clean prediction be correct
    eps_255: float = 8.0  # the L∞ budget, in 1/255
    steps: int = 50  # backward passes per image (both attacks)
    lr: float = 100.0  # D1's λ: the gradient of a probability near 0 is tiny, so λ is large
    eot_samples: int = 8  # transformed copies per EOT gradient
    maximise: tuple[int, ...] = (76, 282)  # D8's classes; empty: skip
    maximise_steps: int = 200  # D8's Adam steps on log P(class)
    start: str = ""  # D8's start and D9's image: a photo (the seed: a corgi); "" = grey start, no D9
    invert_steps: int = 300  # D9's Adam steps; 0 = skip D9
    cpus_per_task: float = 1.0  # Ray CPUs each task reserves; its torch threads follow them
    gpus_per_task: float = 1.0  # only when the cluster has GPUs
    ray_address: str = ""  # default: $RAY_ADDRESS, else a running cluster on this machine, else a new local Ray
    experiment: str = "attack_images"  # MLflow experiment
    smoke_test: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.eps_255 <= 0 or self.steps < 1:
            raise ConfigError("eps_255 must be positive and steps at least 1")
        if self.labels and self.images and len(self.labels) != len(self.images):
            raise ConfigError(f"--labels gives {len(self.labels)} classes for {len(self.images)} images: one each")


SMOKE = {"backbone": "tf_efficientnet_lite0@none", "targets": [812, 76], "steps": 3, "eot_samples": 2,
         "maximise": [76], "maximise_steps": 3, "invert_steps": 3, "experiment": "attack_images_smoke"}


def smoke_image() -> str:
    yy, xx = np.mgrid[0:180, 0:240]
    image = np.stack([xx / 240 * 255, yy / 180 * 255, np.full_like(xx, 128.0)], axis=-1).astype(np.uint8)
    path = Path(tempfile.mkdtemp()) / "smoke_gradient.png"
    Image.fromarray(image).save(path)
    return str(path)


def describe(probabilities: torch.Tensor, names: list[str], target: int | None = None) -> str:
    p, k = probabilities.max(0)
    text = f"{names[int(k)]} {float(p):.2f}"
    return text + (f"\n(target {names[target]}: {float(probabilities[target]):.2f})" if target is not None else "")


def four_by_three(x, adv, probs_x, probs_adv, targets, names, eps, title) -> Figure:
    rows = []
    for i in range(len(x)):
        noise = ((adv[i] - x[i]) / (2 * eps) + 0.5).clamp(0, 1)  # δ amplified: −ε → 0, 0 → grey, +ε → 1
        rows.append((f"→ {names[int(targets[i])]}", [
            (f"original: {describe(probs_x[i], names)}", x[i].permute(1, 2, 0).numpy()),
            (f"noise ×{0.5 / eps:.0f}", noise.permute(1, 2, 0).numpy()),
            (f"adversarial: {describe(probs_adv[i], names, int(targets[i]))}", adv[i].permute(1, 2, 0).numpy())]))
    return map_grid_figure(rows, title)


@torch.no_grad()
def transform_table(model, adv: torch.Tensor, targets: torch.Tensor, names: list[str], variant: str) -> list[dict]:
    rows = []
    for name, transform in {"none": lambda x, g=None: x, **D2_TRANSFORMS}.items():
        probabilities = model(transform(adv)).softmax(1)
        for i, target in enumerate(targets.tolist()):
            rows.append({"attack": variant, "transform": name, "image": i, "target": names[target],
                         "target_prob": float(probabilities[i, target]), "top1": names[int(probabilities[i].argmax())],
                         "survives": bool(probabilities[i].argmax() == target)})
    return rows


def top5_figure(start: torch.Tensor, images: torch.Tensor, probabilities: torch.Tensor, classes: list[int],
                names: list[str]) -> Figure:
    """D8: the start image beside each class-maximised image and its top-5 probabilities."""
    fig = Figure(figsize=(9, 3.2 * (len(classes) + 1)))
    ax = fig.add_subplot(len(classes) + 1, 2, 1)
    ax.imshow(start[0].permute(1, 2, 0).numpy())
    ax.set_axis_off()
    ax.set_title("start", fontsize=9)
    for i, cls in enumerate(classes):
        ax = fig.add_subplot(len(classes) + 1, 2, 2 * i + 3)
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_axis_off()
        ax.set_title(f"maximising {names[cls]}", fontsize=9)
        ax = fig.add_subplot(len(classes) + 1, 2, 2 * i + 4)
        top = probabilities[i].topk(5)
        ax.barh(range(5)[::-1], top.values.numpy())
        ax.set_yticks(range(5)[::-1], [names[int(k)] for k in top.indices])
        ax.set_xlim(0, 1)
        ax.set_title("top-5 probabilities", fontsize=9)
    fig.tight_layout()
    return fig


def attack_specs(cfg: JobConfig) -> dict[str, AttackSpec]:
    """The job's three attacks at one budget: D1 (the seed's), D7 (momentum + margin), D2's EOT variant of D7."""
    return {"d1_probability_ascent": AttackSpec("probability_ascent", steps=cfg.steps, lr=cfg.lr),
            "d7_momentum_margin": AttackSpec("momentum_margin", steps=cfg.steps, early_stop=False),
            "d2_eot_momentum_margin": AttackSpec("momentum_margin", steps=cfg.steps, early_stop=False,
                                                 eot_samples=cfg.eot_samples)}


def _on_device(model, *tensors):
    """Inside a task: the model and tensors on the task's device (the GPU Ray assigned it, else the CPU)."""
    device = pick_device("auto")
    return (model.to(device), *(t.to(device) for t in tensors))


def attack_task(model, spec: AttackSpec, eps: float, x: torch.Tensor, targets: torch.Tensor):
    """One Ray task per attack: the adversarial images, and the plain model's probabilities on them (not the EOT
    average's: D2 asks whether the plain classifier is fooled)."""
    model, x, targets = _on_device(model, x, targets)
    images = spec.build(model, eps)(x, targets, target=targets).images
    with torch.no_grad():
        return images.cpu(), model(images).softmax(1).cpu()


def maximise_task(model, start: torch.Tensor, classes: list[int], steps: int):
    model, start = _on_device(model, start)
    best = maximise_class(model, start, classes, steps)
    with torch.no_grad():
        return best.cpu(), model(best).softmax(1).cpu()


def inversion_task(model, image: torch.Tensor, steps: int):
    model, image = _on_device(model, image)
    layers = early_middle_late_layers(model, image)
    images, distances = invert_features(model, image, layers, steps=steps)
    return layers, images.cpu(), distances


def log_attack(label, x, adv, clean, probabilities, targets, names, cfg: JobConfig) -> dict:
    """One attack's figure and success into the active run; its summary."""
    hit = probabilities.argmax(1) == targets
    summary = {"success": float(hit.float().mean()),
               "target_prob": [round(float(p), 4) for p in probabilities[torch.arange(len(x)), targets]]}
    mlflow.log_metric(f"{label}.success_rate", summary["success"])
    mlflow.log_figure(four_by_three(x, adv, clean, probabilities, targets, names, cfg.eps_255 / 255,
                                    f"{label}: ε = {cfg.eps_255:g}/255, {cfg.steps} steps"), f"{label}.png")
    print(f"{label}: target reached for {int(hit.sum())}/{len(x)} at ε = {cfg.eps_255:g}/255; "
          + ", ".join(f"{names[int(t)]} {p}" for t, p in zip(targets, summary["target_prob"])))
    return summary


def log_clean(paths: tuple[str, ...], clean: torch.Tensor, labels: tuple[int, ...], names: list[str]) -> None:
    """Each image's clean top-1 class and probability (clean_top1.csv); with the true classes, the fraction
    predicted correctly (metric clean_correct: D1's condition)."""
    p, k = clean[:len(paths)].max(1)  # one row per image (a single image is repeated once per target)
    table = pd.DataFrame({"image": [Path(path).name for path in paths], "predicted": k.tolist(),
                          "name": [names[int(i)] for i in k], "probability": p.tolist()})
    if labels:
        table["label"] = list(labels)
        mlflow.log_metric("clean_correct", float((table["predicted"] == table["label"]).mean()))
    mlflow.log_text(table.to_csv(index=False), "clean_top1.csv")
    print("clean predictions: " + ", ".join(f"{r.image} {r.name} {r.probability:.2f}" for r in table.itertuples())
          + (f"; correct {int((table['predicted'] == table['label']).sum())}/{len(table)}" if labels else ""))


def log_inversion(image: torch.Tensor, layers: list[str], images: torch.Tensor, distances: list[float],
                  steps: int, model_name: str) -> None:
    """D9 into the active run: the reconstructions at three layers beside the image, and their distances."""
    row = [("image", image[0].permute(1, 2, 0).numpy())]
    row += [(f"{layer}\nrel. distance {d:.3f}", x.permute(1, 2, 0).numpy())
            for layer, x, d in zip(layers, images, distances)]
    mlflow.log_figure(map_grid_figure([(model_name, row)], f"D9: feature inversion from noise, {steps} steps"),
                      "d9_feature_inversion.png")
    for stage, d in zip(("early", "middle", "late"), distances):
        mlflow.log_metric(f"d9.{stage}.relative_distance", d)
    print("D9: relative feature distance after inversion: "
          + ", ".join(f"{layer} {d:.3f}" for layer, d in zip(layers, distances)))


def main(cfg: JobConfig) -> dict:
    import ray

    paths = cfg.images or (smoke_image(),)  # no images after `with_catalog_photos`: a smoke test
    if len(paths) > 1 and len(paths) != len(cfg.targets):
        raise ConfigError(f"{len(paths)} images need as many --targets (one per image), got {len(cfg.targets)}")
    spec = BackboneSpec.parse(cfg.backbone)
    uri = tracking.connect()
    backbone = spec.load()
    model = backbone.pixel_model()
    size = tuple(backbone.data_config["input_size"][1:])
    pixels = backbone.pixel_transform()  # the model's own preprocessing, less the normalisation it does inside
    images = load_images(paths, pixels)
    x = images.repeat(len(cfg.targets), 1, 1, 1) if len(paths) == 1 else images
    targets = torch.tensor(cfg.targets)
    start = load_images([cfg.start], pixels) if cfg.start else torch.full((1, 3, *size), 0.5)
    names = class_names(1000)
    ray_init(cfg.ray_address)

    def remote(fn):
        return remote_task(fn, cfg.cpus_per_task, cfg.gpus_per_task)

    # every attack, D8 and D9 at once: one coarse task each, the model shipped once through the object store
    model_ref = ray.put(model)
    attacks = {label: remote(attack_task).remote(model_ref, spec, cfg.eps_255 / 255, x, targets)
               for label, spec in attack_specs(cfg).items()}
    maximised = remote(maximise_task).remote(model_ref, start, list(cfg.maximise), cfg.maximise_steps) \
        if cfg.maximise else None
    inverted = remote(inversion_task).remote(model_ref, start, cfg.invert_steps) \
        if cfg.start and cfg.invert_steps else None
    summary: dict = {}
    with tracking.start_run(cfg.experiment, run_name=f"attack {spec.name}", config=cfg) as run:
        with torch.no_grad():
            clean = model(x).softmax(1)
        log_clean(paths, clean, cfg.labels, names)
        rows = []
        for label, ref in attacks.items():
            adv, probabilities = ray.get(ref)
            summary[label] = log_attack(label, x, adv, clean, probabilities, targets, names, cfg)
            rows += transform_table(model, adv, targets, names, label)
        table = pd.DataFrame(rows)
        mlflow.log_text(table.to_csv(index=False), "d2_transforms.csv")
        survival = table.groupby(["attack", "transform"], sort=False)["survives"].mean().unstack()
        mlflow.log_text(survival.to_csv(), "d2_survival.csv")
        print("\nD2: fraction of adversarial images still classified as their target after each transform:\n"
              + survival.round(2).to_string())
        if maximised is not None:
            best, probabilities = ray.get(maximised)
            mlflow.log_figure(top5_figure(start, best, probabilities, list(cfg.maximise), names),
                              "d8_class_maximisation.png")
            for cls, p in zip(cfg.maximise, probabilities):
                mlflow.log_metric(f"d8.{cls}.prob", float(p[cls]))
                print(f"D8: maximising {names[cls]} reaches probability {float(p[cls]):.3f}")
        if inverted is not None:
            log_inversion(start, *ray.get(inverted), cfg.invert_steps, spec.name)
    print(f"MLflow run {run.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return {"run_id": run.info.run_id, **summary}


def with_catalog_photos(cfg: JobConfig) -> JobConfig:
    """Given no --images (and no --smoke-test): the catalog's D1 run, its photos from <data root>/images with their
    classes, and the corgi as D8's start and D9's image, where --labels and --start say nothing else."""
    if cfg.images or cfg.smoke_test:
        return cfg
    return override(cfg, {"images": list(catalog_photos(CATALOG_PHOTOS)), "labels": list(cfg.labels or CATALOG_LABELS),
                          "start": cfg.start or catalog_photos((CORGI,))[0]})


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE, resolve=with_catalog_photos)
