import math

import pytest
import torch

from conftest import lr_trace, staged_copy_ok
from library.config import ConfigError
from library.data import ImageSet, load_cifar10
from library.train.evaluation import eval_batch_size, evaluate
from library.train.loop import train
from library.train.recipe import TrainConfig, build_model, make_optimizer

FAST = dict(batch_size=32, eval_batch_size=128, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def tiny(cifar_root):
    with staged_copy_ok():
        return load_cifar10(cifar_root, val_size=60)


def test_a_short_run_lowers_the_loss_and_reports_every_metric(tiny):
    seen = []
    result = train(TrainConfig(epochs=4, lr=3e-3, **FAST), tiny, on_epoch=lambda m, s: seen.append((m, s.epoch)))
    history = result.history
    assert [m["epoch"] for m in history] == [1, 2, 3, 4] and [e for _, e in seen] == [1, 2, 3, 4]
    assert set(history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s",
                               "epoch_s", "train_s", "threads", "channels_last"}
    assert 0 < history[0]["train_s"] < history[-1]["train_s"]  # training seconds so far, cumulative
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.1
    assert history[-1]["val_acc"] > 0.3  # templates under noise: far above chance (0.1) after a few steps
    assert all(math.isfinite(v) for m in history for v in m.values())


def test_resuming_from_a_checkpoint_continues_the_same_run(tiny, fixed_threads):
    cfg = TrainConfig(epochs=2, seed=5, **FAST)
    straight = train(cfg, tiny)
    saved = {}
    train(TrainConfig(epochs=2, seed=5, **FAST), tiny,
          on_epoch=lambda m, s: saved.setdefault("first", s.state_dict()) if s.epoch == 1 else None)
    resumed = train(cfg, tiny, resume=saved["first"])
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in straight.history])
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float())


def test_a_checkpoint_of_another_model_is_refused_clearly(tiny):
    saved = {}
    train(TrainConfig(epochs=1, **FAST), tiny, on_epoch=lambda m, s: saved.update(s.state_dict()))
    with pytest.raises(ValueError, match="does not match"):
        train(TrainConfig(model="mish_cnn_bn", epochs=2, **FAST), tiny, resume=saved)


def test_same_seed_same_run_other_seed_other_run(tiny, fixed_threads):
    runs = [train(TrainConfig(epochs=1, seed=s, **FAST), tiny).history[0]["train_loss"] for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]


def test_evaluate_restores_the_training_mode(tiny):
    model = build_model(TrainConfig(model="mish_cnn_bn"), tiny)
    model.train()
    result = evaluate(model, tiny.val)
    assert model.training and 0 <= result["acc"] <= 1 and result["loss"] > 0


def test_evaluation_batches_default_to_the_devices_size(tiny):
    """0 (the config's default) is 256 images a pass on the CPU, as fast there as 1,024 with a third of the
    activations; 1,024 on a GPU; a size asked for is kept. The figures do not depend on it."""
    assert eval_batch_size(0, torch.device("cpu")) == 256 and eval_batch_size(0, torch.device("cuda")) == 1024
    assert eval_batch_size(100, torch.device("cpu")) == 100 and TrainConfig().eval_batch_size == 0
    images = torch.randint(0, 256, (600, 3, 32, 32), dtype=torch.uint8)
    val = ImageSet(images, torch.randint(0, 10, (600,)))
    model = build_model(TrainConfig(model="mish_cnn_bn"), tiny)
    batches = []
    model.register_forward_hook(lambda module, args, out: batches.append(len(args[0])))
    by_default, whole = evaluate(model, val), evaluate(model, val, batch_size=1024)
    assert batches == [256, 256, 88, 600]
    assert by_default == pytest.approx(whole)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant"])
def test_schedules_warm_up_then_follow_their_shape(schedule, tiny):
    lrs = lr_trace(TrainConfig(epochs=4, lr=0.1, warmup_epochs=1, schedule=schedule), tiny, steps=40)
    assert lrs[0] < 0.02 and max(lrs) == pytest.approx(0.1, rel=0.02)
    assert lrs[-1] < 0.01 if schedule != "constant" else lrs[-1] == pytest.approx(0.1)


def test_weight_decay_spares_norms_and_biases(tiny):
    cfg = TrainConfig(model="mish_cnn_bn", weight_decay=0.1)
    opt = make_optimizer(cfg, build_model(cfg, tiny))
    spared, decayed = opt.param_groups  # timm's grouping: [no decay, decay]
    assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in spared["params"])


@pytest.mark.parametrize("key, value", [("lr", 0.0), ("epochs", 0), ("label_smoothing", 1.0), ("momentum", 1.0),
                                        ("adv_eps_255", -1.0), ("adv_steps", 0), ("robust_images", 0)])
def test_out_of_range_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**{key: value})


def test_all_augmentations_and_optimizers_train(tiny):
    for cfg in (TrainConfig(epochs=1, optimizer="sgd", lr=0.05, weight_decay=5e-4, crop="resized", cutout=8, **FAST),
                TrainConfig(epochs=1, optimizer="adam", schedule="onecycle", crop="none", flip=False,
                            label_smoothing=0.1, **FAST)):
        assert math.isfinite(train(cfg, tiny).history[0]["train_loss"])


def test_a_resumed_run_adopts_new_learning_rate_and_weight_decay(tiny, fixed_threads):
    saved = {}
    cfg = TrainConfig(epochs=3, lr=1e-3, **FAST)
    straight = train(cfg, tiny, on_epoch=lambda m, s: saved.setdefault("e1", s.state_dict()) if s.epoch == 1 else None)
    resumed = train(TrainConfig(epochs=3, lr=2e-3, weight_decay=0.2, **FAST), tiny, resume=saved["e1"])
    # same place in the schedule, twice the base rate (what PBT's explore step asks for)
    assert resumed.history[1]["lr"] == pytest.approx(2 * straight.history[1]["lr"])
    onecycle = dict(epochs=3, schedule="onecycle", **FAST)
    saved.clear()
    train(TrainConfig(lr=1e-3, **onecycle), tiny, on_epoch=lambda m, s: saved.setdefault("e1", s.state_dict()))
    with pytest.raises(ValueError, match="onecycle cannot take a new lr"):  # never silently ignored
        train(TrainConfig(lr=2e-3, **onecycle), tiny, resume=saved["e1"])


ROBUST = dict(epochs=2, adv_steps=3, robust_eps_255=48, **FAST)  # the synthetic classes survive small radii


def test_adversarial_training_makes_the_model_robust_where_standard_training_is_not(tiny):
    standard = train(TrainConfig(**ROBUST), tiny).history
    robust = train(TrainConfig(adv_eps_255=48, **ROBUST), tiny).history
    assert all("val_robust_acc" in m for m in standard + robust)
    assert standard[-1]["val_robust_acc"] <= standard[-1]["val_acc"]
    assert robust[-1]["val_robust_acc"] > standard[-1]["val_robust_acc"] + 0.1


def test_adversarial_training_resumes_exactly(tiny, fixed_threads):
    """The PGD random starts come from the run's generator, which the checkpoint carries."""
    cfg = TrainConfig(adv_eps_255=48, **ROBUST)
    straight = train(cfg, tiny)
    saved = {}
    train(cfg, tiny, on_epoch=lambda m, s: saved.setdefault("first", s.state_dict()) if s.epoch == 1 else None)
    resumed = train(cfg, tiny, resume=saved["first"])
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in straight.history])


def test_threads_shrink_to_the_cores_others_leave_free_and_grow_back(monkeypatch):
    from library.runtime import CoreShare

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    # (time, busy seconds of this process's 2 CPUs, own CPU seconds): another process busy on one core for 6 s,
    # then nobody else, then background work of 0.6 of a core (Ray's own processes, say): no thread lost to it
    samples = iter([(0.0, 0.0, 0.0), (6.0, 12.0, 6.0), (12.0, 18.0, 12.0), (22.0, 30.0, 18.0)])
    monkeypatch.setattr(CoreShare, "_sample", lambda self: next(samples))
    share = CoreShare(every_s=0)
    share.cpus = {0, 1}
    assert share.adjust() == 1 and share.adjust() == 2 and share.adjust() == 2 and chosen == [1, 2]


def test_a_spinning_process_that_gets_two_thirds_of_a_core_beside_two_threads_still_costs_one(monkeypatch):
    """Every core busy: 3 runnable threads on 2 cores each get 2/3 of one, so the spinner is seen at 0.67 core
    (below the 0.75 mark) though it wants a whole one; Ray's background of 0.3 seen the same way costs none."""
    from library.runtime import CoreShare

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    samples = iter([(0.0, 0.0, 0.0), (3.0, 6.0, 4.0), (6.0, 12.0, 7.0), (9.0, 18.0, 12.1)])
    monkeypatch.setattr(CoreShare, "_sample", lambda self: next(samples))
    share = CoreShare(every_s=0)
    share.cpus = {0, 1}
    assert share.adjust() == 1  # seen: 2/3 of a core beside 2 threads
    assert share.adjust() == 1  # seen: a whole core beside 1 thread
    share.threads = 2
    assert share.adjust() == 2  # seen: 0.3 of a core beside 2 threads (wants ~0.35)


def test_a_resumed_share_does_not_count_what_others_did_during_the_pause(monkeypatch):
    from library.runtime import CoreShare

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    # paused from 0 to 10 s while another process kept a core busy, then 5 s of this process alone on both
    samples = iter([(0.0, 0.0, 0.0), (10.0, 10.0, 0.0), (15.0, 20.0, 10.0)])
    monkeypatch.setattr(CoreShare, "_sample", lambda self: next(samples))
    share = CoreShare(every_s=0)
    share.cpus = {0, 1}
    share.resume()
    assert share.adjust() == 2


def test_threads_go_down_to_one_beside_processes_that_keep_every_core_busy():
    import subprocess
    import sys
    import time

    from library.runtime import CoreShare

    before = torch.get_num_threads()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(CoreShare().cpus))]
    try:
        share = CoreShare(every_s=1.0)
        share.most = 2  # whatever this machine's default: one core busy is enough to want fewer than 2
        time.sleep(1.5)
        assert share.adjust() == 1
    finally:
        for spinner in spinners:
            spinner.kill()
        torch.set_num_threads(before)


def test_a_long_cpu_run_times_both_memory_formats_on_a_copy_and_disturbs_nothing(tiny, monkeypatch):
    from library.train import loop

    cfg = TrainConfig(model="mish_cnn", **FAST)
    model = build_model(cfg, tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    short = loop._memory_format(cfg, model, tiny, torch.device("cpu"), total_steps=10)
    chosen = loop._memory_format(cfg, model, tiny, torch.device("cpu"), total_steps=loop.CPU_FORMAT_TRIAL_STEPS)
    assert short == torch.contiguous_format and chosen in (torch.contiguous_format, torch.channels_last)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    no = TrainConfig(model="mish_cnn", channels_last=False, **FAST)
    assert loop._memory_format(no, model, tiny, torch.device("cpu"), 10**6) == torch.contiguous_format


def test_a_fixed_thread_count_is_set_once_and_never_adjusted(monkeypatch):
    from library.config import ConfigError
    from library.runtime import THREADS_ENV, CoreShare

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "1")
        share = CoreShare(every_s=0)
        assert torch.get_num_threads() == 1 and share.last is None and share.adjust() == 1
        monkeypatch.setenv(THREADS_ENV, "two")
        with pytest.raises(ConfigError, match="CV_THREADS='two'"):
            CoreShare()
    finally:
        torch.set_num_threads(before)
