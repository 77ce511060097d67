"""Class maximisation (D8) and feature inversion (D9) on CIFAR-10 models, side by side: D10 runs them against an
adversarially trained network beside a standard one, where the robust one's images should change visibly.

    python jobs/tune_cnn.py --adv_eps_255=8 --metric=val_robust_acc --name=robust_cnn   # the robust model (D10)
    python jobs/gradient_images.py --models=[run:<robust sweep's parent run>,run:<a standard model's run>]
    python jobs/gradient_images.py --smoke-test

Models are named as in jobs/eps_sweep.py (registered:, run:, init:). The image is the first test image of
`start_class` that the first model classifies correctly. D8 maximises log P(class) from it for each of
`maximise`; D9 reconstructs it from noise at each model's first, middle and last convolution. MLflow:
d8_class_maximisation.png and d9_feature_inversion.png (one row per model), gradient_images.csv with each
model's reached probabilities, relative feature distances and the pixel RMSE between each reconstruction and
the image (how much of the image the layer's features pin down without any image prior).
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

from library import model_store, tracking  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import ConfigError  # noqa: E402
from library.data.options import DataOptions, load_data  # noqa: E402
from library.plots import map_grid_figure  # noqa: E402
from library.runtime import pick_device  # noqa: E402
from library.adversarial.synthesis import early_middle_late_layers, invert_features, maximise_class  # noqa: E402


@dataclass(frozen=True)
class JobConfig(DataOptions):
    models: tuple[str, ...] = ()  # registered:<name>, run:<run id> or init:<registry name>; e.g. robust, standard
    start_class: int = 5  # the image: the first test image of this class (dog) the first model gets right
    maximise: tuple[int, ...] = (3, 6)  # D8's classes (cat, frog), maximised from that image
    maximise_steps: int = 200  # D8's Adam steps on log P(class)
    maximise_lr: float = 0.01  # their learning rate
    jitter: int = 2  # D8's random shifts, pixels
    invert_steps: int = 500  # D9's Adam steps
    device: str = "auto"  # auto = the GPU when there is one
    experiment: str = "gradient_images"  # MLflow experiment
    smoke_test: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.maximise_steps < 1 or self.invert_steps < 1:
            raise ConfigError("maximise_steps and invert_steps must be at least 1")


SMOKE = {"models": ["init:mish_cnn", "init:mish_cnn_bn"], "maximise_steps": 3, "invert_steps": 3,
         "val_size": 50, "experiment": "gradient_images_smoke"}


def pick_image(model, x: torch.Tensor, y: torch.Tensor, cls: int) -> int:
    """The first test image of class `cls` that `model` classifies correctly (the first of the class if none)."""
    with torch.no_grad():
        right = model(x).argmax(1) == y
    candidates = torch.nonzero((y == cls) & right).flatten()
    if not len(candidates):
        candidates = torch.nonzero(y == cls).flatten()
    if not len(candidates):
        raise ConfigError(f"no test image of class {cls}")
    return int(candidates[0])


def _rgb(image: torch.Tensor):
    return image.permute(1, 2, 0).cpu().numpy()


def class_maximisation(model, image: torch.Tensor, cfg: JobConfig, names) -> tuple[list, list[dict]]:
    """D8 for one model: the figure row (start, one image per class) and the probabilities reached."""
    best = maximise_class(model, image, list(cfg.maximise), cfg.maximise_steps, lr=cfg.maximise_lr, jitter=cfg.jitter)
    with torch.no_grad():
        before = model(image).softmax(1)[0]
        after = model(best).softmax(1)
    row = [(f"start: {names[int(before.argmax())]} {float(before.max()):.2f}", _rgb(image[0]))]
    row += [(f"→ {names[c]}: {float(p[c]):.2f}", _rgb(img)) for c, img, p in zip(cfg.maximise, best, after)]
    measures = [{"experiment": "d8", "item": names[c], "measure": "probability", "value": float(p[c])}
                for c, p in zip(cfg.maximise, after)]
    return row, measures


def inversion(model, image: torch.Tensor, cfg: JobConfig) -> tuple[list, list[dict]]:
    """D9 for one model: the figure row (image, one reconstruction per layer), each reconstruction's relative
    feature distance and its pixel RMSE to the image."""
    layers = early_middle_late_layers(model, image)
    inverted, distances = invert_features(model, image, layers, steps=cfg.invert_steps)
    rmse = [float((img - image[0]).square().mean().sqrt()) for img in inverted]
    row = [("image", _rgb(image[0]))]
    row += [(f"{layer}: feat {d:.3f}, pixel RMSE {r:.3f}", _rgb(img))
            for layer, img, d, r in zip(layers, inverted, distances, rmse)]
    measures = [{"experiment": "d9", "item": layer, "measure": m, "value": v}
                for layer, d, r in zip(layers, distances, rmse)
                for m, v in (("relative_distance", d), ("pixel_rmse", r))]
    return row, measures


def main(cfg: JobConfig) -> dict:
    if not cfg.models:
        raise ConfigError("name the models: --models=[run:<robust run id>,run:<standard run id>]")
    uri = tracking.connect()
    data = load_data(cfg)
    names = data.classes
    unknown = [c for c in (cfg.start_class, *cfg.maximise) if not 0 <= c < len(names)]
    if unknown:
        raise ConfigError(f"classes {unknown} are not classes of {data.name} (0..{len(names) - 1})")
    device = pick_device(cfg.device)
    models = {spec: model_store.load_model_spec(spec, data.num_classes, data.image_shape[0]).to(device).eval() for spec in cfg.models}
    x = data.test.images.float().div(255).to(device)
    y = data.test.labels.to(device)
    index = pick_image(next(iter(models.values())), x, y, cfg.start_class)
    image = x[index:index + 1]
    rows, d8_rows, d9_rows = [], [], []
    with tracking.start_run(cfg.experiment, run_name=f"gradient images, {len(models)} models", config=cfg) as run:
        mlflow.log_param("image.test_index", index)
        for i, (spec, model) in enumerate(models.items()):
            label = f"{i}: {spec[:24]}"
            d8, d8_measures = class_maximisation(model, image, cfg, names)
            d9, d9_measures = inversion(model, image, cfg)
            d8_rows.append((label, d8))
            d9_rows.append((label, d9))
            rows += [{"model": spec, **r} for r in d8_measures + d9_measures]
            print(f"{label}: " + ", ".join(f"{r['experiment']} {r['item']} {r['measure']} {r['value']:.3f}"
                                           for r in d8_measures + d9_measures if r["measure"] != "relative_distance"))
        mlflow.log_figure(map_grid_figure(d8_rows, f"D8: log P(class) ascent, {cfg.maximise_steps} steps"),
                          "d8_class_maximisation.png")
        mlflow.log_figure(map_grid_figure(d9_rows, f"D9: inversion from noise, {cfg.invert_steps} steps"),
                          "d9_feature_inversion.png")
        table = pd.DataFrame(rows)
        mlflow.log_table(table, "gradient_images.json")
        mlflow.log_text(table.to_csv(index=False), "gradient_images.csv")
    print(f"MLflow run {run.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return {"run_id": run.info.run_id, "rows": rows}


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
