"""The attacks: the ε-ball and the pixel range, the model's mode, the budget in backward passes, early stopping,
robust accuracy against clean, and our PGD against torchattacks' on the same model and settings."""
import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_images
from library.adversarial.attacks import EOT, FGSM, PGD, IterativeFGSM, MomentumMargin, ProbabilityAscent
from library.models import create_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained for a few steps on the class-template images: mostly right, attackable."""
    torch.manual_seed(0)
    images, labels = synthetic_images(400, 1, 28, seed=0)
    x, y = torch.from_numpy(images).float() / 255, torch.from_numpy(labels).long()
    model = create_model("scratch_cnn", widths=(8, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for i in range(0, 400, 50):
            optimizer.zero_grad()
            F.cross_entropy(model(x[i:i + 50]), y[i:i + 50]).backward()
            optimizer.step()
    test_x, test_y = synthetic_images(64, 1, 28, seed=1)
    return model, torch.from_numpy(test_x).float() / 255, torch.from_numpy(test_y).long()


def attacks(model):
    return {
        "fgsm": FGSM(model, EPS),
        "pgd": PGD(model, EPS, alpha=2 / 255, steps=10, restarts=1),
        "iterative_fgsm": IterativeFGSM(model, step=1 / 255, confidence=0.9, max_steps=15, eps=EPS),
        "momentum_margin": MomentumMargin(model, EPS, steps=10),
    }


@pytest.mark.parametrize("name", ["fgsm", "pgd", "iterative_fgsm", "momentum_margin"])
def test_attack_stays_in_the_ball_and_the_pixel_range_and_restores_the_mode(trained, name):
    model, x, y = trained
    model.train()
    result = attacks(model)[name](x, y)
    assert model.training
    assert (result.images - x).abs().max() <= EPS + 1e-6
    assert result.images.min() >= 0 and result.images.max() <= 1


@pytest.mark.parametrize("name, budget", [("fgsm", 1), ("pgd", 20), ("iterative_fgsm", 15), ("momentum_margin", 10)])
def test_attack_respects_its_budget_and_lowers_accuracy(trained, name, budget):
    model, x, y = trained
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
    result = attacks(model)[name](x, y)
    assert result.backward_passes.max() <= budget
    robust = (result.probabilities.argmax(1) == y).float().mean()
    assert robust <= clean
    wrong = result.probabilities.argmax(1) != y
    assert (wrong | ~result.success).all()  # a success is misclassified
    if attacks(model)[name].confidence == 0:
        assert torch.equal(result.success, wrong)


def test_early_stopping_spends_less_on_samples_already_broken(trained):
    model, x, y = trained
    stopping = PGD(model, EPS, alpha=2 / 255, steps=10, random_start=False)(x, y)
    full = PGD(model, EPS, alpha=2 / 255, steps=10, random_start=False, early_stop=False)(x, y)
    assert full.backward_passes.eq(10).all()
    assert stopping.backward_passes.sum() < full.backward_passes.sum()
    assert stopping.success.sum() >= full.success.sum() - 1  # stopping early keeps (almost) every success


def test_targeted_attacks_reach_their_target(trained):
    model, x, y = trained
    target = (y + 1) % 10
    for attack in (PGD(model, 0.3, alpha=0.02, steps=40), ProbabilityAscent(model, 0.3, lr=2.0, steps=60),
                   MomentumMargin(model, 0.3, steps=40)):
        result = attack(x, y, target=target)
        assert (result.images - x).abs().max() <= 0.3 + 1e-6
        assert result.success.float().mean() > 0.5, type(attack).__name__
        assert torch.equal(result.success, result.probabilities.argmax(1) == target)


def test_iterative_fgsm_stops_each_sample_at_the_asked_confidence(trained):
    model, x, y = trained
    result = IterativeFGSM(model, step=2 / 255, confidence=0.9, max_steps=100)(x[:16], y[:16])
    top_p, top = result.probabilities.max(1)
    broken = result.success
    assert broken.sum() >= 8 and (top_p[broken] >= 0.9).all() and (top[broken] != y[:16][broken]).all()
    assert result.backward_passes[broken].min() < 100  # those stopped as soon as they got there


def test_our_pgd_matches_torchattacks(trained):
    torchattacks = pytest.importorskip("torchattacks", reason="the reference implementation (test extra)")
    model, x, y = trained
    model.eval()
    theirs = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=10, random_start=False)(x, y)
    ours = PGD(model, EPS, alpha=2 / 255, steps=10, random_start=False, early_stop=False)(x, y)
    assert torch.allclose(ours.images, theirs, atol=1e-6)
    with torch.no_grad():
        their_success = (model(theirs).argmax(1) != y).float().mean()
    assert ours.success.float().mean() >= their_success


def test_eot_averages_over_transformations(trained):
    model, x, y = trained
    flip = lambda images, g: images.flip(3)  # noqa: E731
    same = lambda images, g: images  # noqa: E731
    wrapped = EOT(model.eval(), [flip], samples=2)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), model(x.flip(3)), atol=1e-6)
        mixed = EOT(model, [flip, same], samples=64)(x)
        assert torch.allclose(mixed, (model(x) + model(x.flip(3))) / 2, atol=0.5)


def test_attacking_through_eot_leaves_the_wrapped_model_in_its_mode(trained):
    model, x, y = trained
    for mode in (False, True):
        model.train(mode)
        MomentumMargin(EOT(model, [lambda images, g: images.flip(3)], samples=2), 8 / 255, steps=2)(x[:4], y[:4])
        assert model.training == mode
    model.eval()


def test_sweep_with_robust_flags_is_monotone_and_does_less_work(trained):
    from library.adversarial.registry import AttackSpec
    from library.adversarial.robustness import independent_work, sweep

    model, x, y = trained
    eps = [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]
    spec = AttackSpec("pgd", steps=5, random_start=False)
    rows, standing = sweep(model, spec, x, y, eps)
    robust = [r["standing"] for r in rows]
    assert robust == sorted(robust, reverse=True) and robust[-1] == int(standing.sum())
    assert all(r["attacked"] >= r["standing"] for r in rows)
    flagged = sum(r["backward_passes"] for r in rows)
    assert flagged < independent_work(model, spec, x, y, eps)
    # continuing from the flags of a first chunk gives the same curve as one pass over all ε
    first, flags = sweep(model, spec, x, y, eps[:2])
    second, _ = sweep(model, spec, x, y, eps[2:], standing=flags)
    assert [r["standing"] for r in first + second] == robust


def test_bisection_gives_the_monotone_curve_with_fewer_attacks(trained):
    from library.adversarial.registry import AttackSpec
    from library.adversarial.robustness import bisection_sweep, sweep

    model, x, y = trained
    eps = [k / 255 for k in (1, 2, 4, 8, 16, 32, 64)]
    spec = AttackSpec("pgd", steps=5, random_start=False)  # deterministic: the same attack at each ε
    ascending, _ = sweep(model, spec, x, y, eps)
    bisected, standing = bisection_sweep(model, spec, x, y, eps)
    robust = [r["standing"] for r in bisected]
    assert robust == sorted(robust, reverse=True) and robust[-1] == int(standing.sum())
    assert all(abs(a["standing"] - b) <= 0.02 * len(x) for a, b in zip(ascending, robust))
    # at most ceil(log2(8)) = 3 attacks per image against up to 7
    assert sum(r["attacked"] for r in bisected) <= 3 * ascending[0]["attacked"] < sum(r["attacked"] for r in ascending)


def test_targeted_sweep_counts_images_not_yet_at_their_target(trained):
    from library.adversarial.registry import AttackSpec
    from library.adversarial.robustness import sweep

    model, x, y = trained
    rows, _ = sweep(model, AttackSpec("pgd", steps=10, targeted=True), x, y, [0.05, 0.3])
    assert rows[0]["standing"] >= rows[1]["standing"] and rows[1]["standing"] < len(x) // 2


def test_wilson_interval_and_the_pgd_table(trained):
    from library.adversarial.robustness import pgd_table
    from library.stats import wilson_interval

    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == 1
    model, x, y = trained
    table = pgd_table(model, x[:16], y[:16], [2 / 255, 8 / 255], [1, 5])
    assert len(table) == 4 and all(0 <= r["top1"] <= r["top5"] <= 1 and r["seconds"] > 0 for r in table)
    by = {(r["iterations"], r["eps"]): r["top1"] for r in table}
    assert by[(5, 8 / 255)] <= by[(1, 2 / 255)]


def test_every_attack_in_the_table_builds_by_name_and_an_unknown_name_lists_the_valid_ones(trained):
    from library.adversarial.registry import ATTACKS, AttackSpec
    from library.config import ConfigError

    model, x, y = trained
    torch.manual_seed(0)
    rgb_model, rgb = create_model("mish_cnn").eval(), torch.rand(4, 3, 32, 32)  # D2's transformations are for RGB
    for name in ATTACKS:
        spec = AttackSpec(name, steps=2)
        result = spec.build(model, EPS)(x[:4], y[:4], spec.targets(y[:4], 10))
        assert (result.images - x[:4]).abs().max() <= EPS + 1e-6
        eot = AttackSpec(name, steps=2, eot_samples=2)
        result = eot.build(rgb_model, EPS)(rgb, y[:4], eot.targets(y[:4], 10))
        assert (result.images - rgb).abs().max() <= EPS + 1e-6
    with pytest.raises(ConfigError, match="unknown attack 'pgdd'.*fgsm.*momentum_margin.*pgd"):
        AttackSpec("pgdd")


@pytest.mark.parametrize("search", ["sweep", "bisection_sweep", "independent_work"])
def test_sweeps_restore_the_model_mode(trained, search):
    from library.adversarial import robustness
    from library.adversarial.registry import AttackSpec

    model, x, y = trained
    for mode in (True, False):
        model.train(mode)
        getattr(robustness, search)(model, AttackSpec("fgsm"), x[:8], y[:8], [EPS])
        assert model.training == mode
    model.eval()
