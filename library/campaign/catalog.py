"""The experiment catalog (../shared/EXPERIMENTS.md, A1…F1) as data: for each ID, what it is, the unit (job
invocation, `units.py`) that answers it, the number that answers it, read from that unit's MLflow run, the
seeds' expectation where they state one, and the figure the report shows. The README's experiment table is
checked against it (tests/test_campaign.py), so the two cannot drift."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import mlflow

from ..config import ConfigError
from .measures import MISSING, Measure, Reader, from_table, metric, table

Check = Callable[[Measure, Mapping[str, Measure]], bool]


@dataclass(frozen=True)
class Entry:
    id: str
    what: str
    unit: str
    metric: str  # what the number is
    read: Reader
    bar: str = ""  # the expectation, in words ("" where the seeds state none)
    check: Check | None = None  # whether the measure meets the bar, given every ID's measure
    figure: str = ""  # an artifact of the unit's run, shown in the report

    def measure(self, run: mlflow.entities.Run | None) -> Measure:
        return self.read(run) if run is not None else MISSING

    def met(self, measure: Measure, others: Mapping[str, Measure]) -> str:
        """yes / no, or "" without a bar; "no" when the number is missing."""
        if self.check is None:
            return ""
        if measure.value is None:
            return "no"
        return "yes" if self.check(measure, others) else "no"


def at_least(bar: float) -> Check:
    return lambda m, _: m.value >= bar


def above(*ids: str) -> Check:
    def check(m: Measure, others: Mapping[str, Measure]) -> bool:  # an ID not measured: not beaten
        return all(others.get(i, MISSING).value is not None and m.value > others[i].value for i in ids)

    return check


def artifacts(run_path: str) -> Reader:
    """How many files the run logged under `run_path` (figure-only IDs: present or not)."""
    def read(run: mlflow.entities.Run) -> Measure:
        folder, _, name = run_path.rpartition("/")
        listed = mlflow.MlflowClient().list_artifacts(run.info.run_id, folder or None)
        count = sum(1 for a in listed if not a.is_dir and (not name or a.path.endswith(name)))
        return Measure(float(count), unit=" figure(s)")

    return read


def _probe(run: mlflow.entities.Run) -> Measure:
    """The probe of the unit's one backbone."""
    rows = table(run, "probes.csv")
    if rows is None or rows.empty:
        return MISSING
    return Measure(float(rows["mean_per_class_acc"].iloc[0]), unit="%")


def _transfer(run: mlflow.entities.Run) -> Measure:
    """D4: the second model's accuracy on the images made on the first (transfer_matrix.csv, sources × targets)."""
    matrix = table(run, "transfer_matrix.csv")
    return Measure(float(matrix.iloc[0, 2]), unit="%") if matrix is not None and matrix.shape[1] > 2 else MISSING


def _d8(run: mlflow.entities.Run) -> Measure:
    probs = sorted(k for k in run.data.metrics if k.startswith("d8.") and k.endswith(".prob"))
    return Measure(run.data.metrics[probs[0]], unit="%") if probs else MISSING


def _d1(run: mlflow.entities.Run) -> Measure:
    """The lesser of the targets reached and the clean predictions correct (the seed asks both of every photo)."""
    reached, correct = run.data.metrics.get(f"{ATTACKS[0]}.success_rate"), run.data.metrics.get("clean_correct")
    if reached is None or correct is None:
        return MISSING
    return Measure(min(reached, correct), unit="%", detail=f"targets {reached:.0%}, clean {correct:.0%}")


def _a10b(run: mlflow.entities.Run) -> Measure:
    """accuracy_by_batch.csv: a row per normalisation, a column per batch size (smallest first)."""
    rows = table(run, "accuracy_by_batch.csv")
    if rows is None or not {"bn", "gn"} <= set(rows["norm"]):
        return MISSING
    by_norm = rows.set_index("norm")
    return Measure(float(by_norm.loc["bn"].iloc[0] - by_norm.loc["gn"].iloc[0]), unit="%")


def _rows(run: mlflow.entities.Run, path: str) -> Measure:
    rows = table(run, path)
    return Measure(float(len(rows)), unit=" rows") if rows is not None else MISSING


def _gap(first: str, second: str) -> Reader:
    """Accuracy `first` minus accuracy `second`, metrics of the same run (printed in points)."""
    def read(run: mlflow.entities.Run) -> Measure:
        a, b = run.data.metrics.get(first), run.data.metrics.get(second)
        return Measure(a - b if a is not None and b is not None else None, unit=" pts")

    return read


ATTACKS = "d1_probability_ascent", "d7_momentum_margin"
MNIST_A = {"model": "registered:mnist_a"}
CATALOG: list[Entry] = [
    Entry("A1", "Mish CNN, AdamW (mean over seeds)", "bn_study", "test acc", metric("no_bn.test_acc_mean", "%"),
          figure="train_loss_per_epoch.png"),
    Entry("A2", "A1 with BatchNorm (mean over seeds)", "bn_study", "test acc", metric("bn.test_acc_mean", "%"),
          "above A1", above("A1"), "filters/bn.png"),
    Entry("A3", "the searched improved CNN, final fit", "tune_cnn", "test acc", metric("test_acc", "%", "test_images"),
          "beats A1 and A2", above("A1", "A2"), "learning_curves.png"),
    Entry("A4", "Table-1 net, four input pipelines", "pipeline_study", "test acc, + flip + crop − raw pixels",
          _gap("flip_crop.test_acc_mean", "raw.test_acc_mean"), "the pipeline helps (above 0)",
          lambda m, _: m.value > 0, "train_acc_per_iteration.png"),
    Entry("A5", "all-convolutional net", "vanishing_gradients", "test acc", metric("a5.test_acc_mean", "%"),
          "≥ 68%", at_least(0.68), "train_acc_per_iteration.png"),
    Entry("A6", "gradient magnitude G of the first and last conv, every iteration", "vanishing_gradients",
          "G curves", artifacts("gradient_magnitude.png"), figure="gradient_magnitude.png"),
    Entry("A7", "+20 plain 5×5 convs, no BN (vanishing)", "vanishing_gradients", "test acc",
          metric("a7.test_acc_mean", "%")),
    Entry("A8", "A7 fixed: residual connections, He init", "vanishing_gradients", "test acc − A7's",
          _gap("a8.test_acc_mean", "a7.test_acc_mean"), "trains where A7 does not (above A7)",
          lambda m, _: m.value > 0),
    Entry("A9", "CIFAR ResNet, Adam, ≥ 30 epochs", "resnet", "val acc", metric("val_acc", "%", "data.val_images"),
          "≥ 85% validation", at_least(0.85), "training_curves.png"),
    Entry("A10a", "bias before BN cancelled", "bn_study", "max |Δ logit|", metric("a10a.max_abs_logit_diff"),
          "≤ 1e-4 (numerically nothing)", lambda m, _: m.value <= 1e-4),
    Entry("A10b", "BN vs GN vs LN vs none over batch sizes", "norm_batch_study", "BN − GN acc at the smallest batch",
          lambda run: _a10b(run), "below 0: BN fails where batches are tiny", lambda m, _: m.value < 0,
          "accuracy_vs_batch_size.png"),
    Entry("B1", "conv2d / Conv2d / MaxPool2d from scratch vs PyTorch", "scratch_layers", "max |difference|",
          metric("b1_max_abs_error"), "≤ 1e-6 on values and gradients", lambda m, _: m.value <= 1e-6),
    Entry("B2", "MNIST CNN from B1's layers", "scratch_mnist", "val acc", metric("val_acc", "%", "data.val_images"),
          "≥ 90% validation", at_least(0.90), "training_curves.png"),
    Entry("B3", "B1's speed against F.conv2d", "scratch_layers", "time ratio (median)", metric("b3_time_ratio_median"),
          "≤ 3×", lambda m, _: m.value <= 3, "b3_time_ratio.png"),
    Entry("C1", "pretrained classifier: top-k, logits, random weights", "inspect_pretrained", "last layer input width",
          metric("last_layer_input_width"), figure="top_k.png"),
    Entry("C2", "feature maps early / middle / late", "inspect_pretrained", "figure", artifacts("feature_maps.png"),
          figure="feature_maps.png"),
    Entry("C3", "linear probe on CNN features, Oxford-IIIT Pet", "probe_cnn", "mean per-class acc", _probe),
    Entry("C4", "the same with a vision transformer", "probe_vit", "mean per-class acc", _probe),
    Entry("C5", "fine-tuned pretrained vs from scratch", "finetune", "top-1, fine-tuned − scratch",
          _gap("pretrained.test_top1", "scratch.test_top1"), "fine-tuned above scratch", lambda m, _: m.value > 0),
    Entry("D1", "targeted probability ascent, 4 photos", "attack_images", "targets reached, clean correct",
          lambda run: _d1(run), "every clean prediction correct, every target reached", at_least(1.0),
          f"{ATTACKS[0]}.png"),
    Entry("D2", "D1 under flip / crop / rotation / grayscale", "attack_images", "EOT targets reached",
          metric("d2_eot_momentum_margin.success_rate", "%"), figure="d2_eot_momentum_margin.png"),
    Entry("D3", "iterative FGSM to 99% confidence, 2 per class", "transfer_attack", "reached confidence",
          metric("0.reached_confidence", "%"), "all 20 at ≥ 99%", at_least(1.0), "d3_0.png"),
    Entry("D4", "D3's images on a second network", "transfer_attack", "its accuracy on them",
          lambda run: _transfer(run), figure="transfer_matrix.png"),
    Entry("D5", "untargeted L∞ PGD on MNIST A, ≤ 20 backward passes", "eps_sweep", "robust acc at 8/255",
          from_table("sweep.csv", "robust_acc", {**MNIST_A, "attack": "pgd", "eps_255": 8.0}, unit="%", n_column="n"),
          figure="curves/0_registered_mnist_a.png"),
    Entry("D6", "targeted PGD on MNIST A: every 1 classified as 8", "eps_sweep_targeted", "success at 16/255",
          from_table("sweep.csv", "targeted_success", {**MNIST_A, "attack": "pgd_targeted", "eps_255": 16.0},
                     unit="%", n_column="n")),
    Entry("D7", "momentum + margin targeted attack, same budget", "eps_sweep_targeted", "success at 16/255",
          from_table("sweep.csv", "targeted_success", {**MNIST_A, "attack": "momentum_margin_targeted",
                                                          "eps_255": 16.0}, unit="%",
                     n_column="n"), "above D6", above("D6"), "curves/0_registered_mnist_a.png"),
    Entry("D8", "class maximisation from the corgi", "attack_images", "P(first class)", lambda run: _d8(run),
          figure="d8_class_maximisation.png"),
    Entry("D9", "feature inversion at three layers", "attack_images", "relative distance, late layer",
          metric("d9.late.relative_distance"), figure="d9_feature_inversion.png"),
    Entry("D10", "D8/D9 on a robust vs a standard model", "gradient_images", "figures",
          artifacts("d8_class_maximisation.png"), figure="d8_class_maximisation.png"),
    Entry("D11", "PGD accuracy over (iterations, ε)", "eps_sweep", "rows", lambda run: _rows(run, "pgd_table.csv")),
    Entry("D12", "ε-sweeps with intervals, every model × attack", "eps_sweep", "rows",
          lambda run: _rows(run, "sweep.csv"),
          figure="curves/1_registered_mnist_b.png"),
    Entry("E1", "class activation maps", "inspect_pretrained", "figure", artifacts("cam.png"), figure="cam.png"),
    Entry("E2", "saliency maps", "inspect_pretrained", "figure", artifacts("saliency.png"), figure="saliency.png"),
    Entry("E3", "first-layer filter grid (A1's formula)", "standard", "figure", artifacts("first_layer_filters.png"),
          figure="first_layer_filters.png"),
    Entry("F1", "4-block ViT from scratch beside the CNNs", "vit_study", "test acc", metric("vit.test_acc_mean", "%"),
          figure="train_loss_per_epoch.png"),
]


def select(ids: tuple[str, ...] | list[str]) -> list[Entry]:
    """The entries of `ids` in catalog order (all of them for none); an unknown ID raises, listing the valid."""
    known = {e.id: e for e in CATALOG}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ConfigError(f"unknown experiment ID(s) {unknown}; valid IDs: {', '.join(known)}")
    return [e for e in CATALOG if not ids or e.id in ids]


def markdown_table() -> str:
    """The README's experiment table: a row per ID, the command that answers it (the full-budget profile's
    arguments; `<standard>` is that unit's run), the number read and the seeds' bar."""
    from .units import UNITS

    def command(unit: str) -> str:
        args = [a.replace("{photos}", "<photos>").replace("{", "<").replace("}", ">") for a in UNITS[unit].args["gpu"]]
        return f"`python jobs/{' '.join([UNITS[unit].job, *args])}`"

    lines = ["| ID | what | command | metric | expectation |", "|---|---|---|---|---|"]
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines += [f"| {e.id} | {cell(e.what)} | {command(e.unit)} | {cell(e.metric)} | {cell(e.bar)} |" for e in CATALOG]
    return "\n".join(lines)
