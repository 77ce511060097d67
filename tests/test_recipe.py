"""The airbench recipe's ingredients as TrainConfig options (issue 14): each off by default; EMA and Lookahead
resume exactly; test-time augmentation never costs accuracy beyond noise; airbench's optimiser units; the
linear schedule; reflect-padded translation and alternating flips."""
import math

import pytest
import torch

from conftest import lr_trace, staged_copy_ok
from library.data import Augment, load_cifar10
from library.train.evaluation import evaluate, tta_logits
from library.train.loop import train
from library.train.recipe import TrainConfig, make_optimizer

FAST = dict(batch_size=32, eval_batch_size=128, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def tiny(cifar_root):
    with staged_copy_ok():
        return load_cifar10(cifar_root, val_size=60)


def test_every_new_ingredient_is_off_by_default():
    cfg = TrainConfig()
    assert (cfg.ema_decay, cfg.lookahead_steps, cfg.tta, cfg.norm_bias_lr, cfg.flip_mode, cfg.crop_pad_mode,
            cfg.warmup_start, cfg.final_lr) == (0.0, 0, "none", 1.0, "random", "zeros", 0.01, 0.0)


@pytest.mark.parametrize("averaging", [dict(ema_decay=0.9), dict(lookahead_steps=3, lookahead_alpha=0.5),
                                       dict(ema_decay=0.8, lookahead_steps=2)])
def test_ema_and_lookahead_resume_exactly_from_a_checkpoint(tiny, averaging, fixed_threads):
    cfg = TrainConfig(epochs=3, **FAST, **averaging)
    saved = {}
    straight = train(cfg, tiny, on_epoch=lambda m, s: saved.setdefault("e1", s.state_dict()) if s.epoch == 1 else None)
    assert {"ema", "lookahead"} & set(saved["e1"])  # the averages are in the checkpoint
    resumed = train(cfg, tiny, resume=saved["e1"])
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in straight.history]


def test_the_ema_is_what_validation_scores_and_what_training_returns(tiny):
    result = train(TrainConfig(epochs=2, ema_decay=0.5, **FAST), tiny)
    again = evaluate(result.model, tiny.val, 128, True)
    assert again["acc"] == pytest.approx(result.history[-1]["val_acc"])


def test_test_time_augmentation_never_costs_accuracy_beyond_noise(tiny):
    model = train(TrainConfig(epochs=3, seed=1, **FAST), tiny).model
    scores = {tta: evaluate(model, tiny.test, 128, True, tta)["acc"] for tta in ("none", "flip", "flip_translate")}
    noise = 2 / math.sqrt(len(tiny.test))  # ~2 standard errors of an accuracy on these test images
    assert scores["flip"] >= scores["none"] - noise and scores["flip_translate"] >= scores["none"] - noise, scores
    x = tiny.test.images[:4].float() / 255
    with torch.no_grad():  # a mirror-symmetric view set: the flipped images get the same TTA logits
        torch.testing.assert_close(tta_logits(model.eval(), x, "flip"), tta_logits(model, x.flip(3), "flip"))


def test_sgd_1024_states_lr_and_decay_per_1024_examples_and_speeds_up_norm_biases(tiny):
    cfg = TrainConfig(model="mish_cnn_bn", optimizer="sgd_1024", lr=10.0, weight_decay=0.015, momentum=0.85,
                      batch_size=512, norm_bias_lr=64.0)
    from library.train.recipe import build_model

    model = build_model(cfg, tiny)
    optimizer = make_optimizer(cfg, model)
    kilo = 1024 * (1 + 1 / (1 - 0.85))
    main, biases = optimizer.param_groups
    assert main["lr"] == pytest.approx(10.0 * 512 / kilo) and biases["lr"] == pytest.approx(64 * main["lr"])
    for group in (main, biases):  # torch decays by lr × weight_decay: that product is the stated decay per step
        assert group["lr"] * group["weight_decay"] == pytest.approx(0.015 * 512 / kilo)
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == norm_biases and optimizer.defaults["nesterov"]


def test_the_linear_schedule_warms_up_from_warmup_start_and_ends_at_final_lr(tiny):
    cfg = TrainConfig(epochs=2, lr=1.0, schedule="linear", warmup_epochs=0.5, warmup_start=0.2, final_lr=0.07)
    lrs = lr_trace(cfg, tiny, steps=20)
    assert lrs[0] == pytest.approx(0.2) and lrs[5] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.07 + 0.93 / 15)  # one step before the end of the linear decay to 0.07


def test_reflect_padded_translation_and_alternating_flips():
    x = (torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    g = torch.Generator().manual_seed(1)
    draw = Augment(crop="pad", pad=2, flip=False, pad_mode="reflect").bind(x)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    crops = draw(torch.arange(8), g)
    windows = padded.unfold(2, 8, 1).unfold(3, 8, 1)  # N×C×5×5×8×8: every crop of the reflect-padded image
    for i in range(8):
        assert any(torch.equal(crops[i], windows[i, :, dy, dx]) for dy in range(5) for dx in range(5))
    flips = Augment(crop="none", flip=True, flip_mode="alternate").bind(x)
    seen = torch.stack([(flips(torch.arange(8), g) != x).flatten(1).any(1) for _ in range(4)])  # N flipped?
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], ~seen[0]) and torch.equal(seen[3], ~seen[0])
