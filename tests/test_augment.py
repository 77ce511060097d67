import pytest
import torch

from library.data import Augment, DeviceLoader, ImageSet, cutout, random_crop, random_flip, random_resized_crop


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _batch(n=16, c=3, s=8):
    return torch.rand(n, c, s, s, generator=_gen(99))


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = _batch()
    out = random_crop(x, _gen(), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert out.shape == x.shape
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_about_half_of_the_images():
    x = _batch(n=400)
    out = random_flip(x, _gen())
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250


@pytest.mark.parametrize("size", [3, 4])
def test_cutout_zeroes_at_most_a_size_by_size_square(size):
    x = torch.ones(64, 3, 16, 16)
    out = cutout(x, _gen(), size)
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert int(zeros.max()) == size * size and int(zeros.min()) > 0  # whole squares inside, clipped at edges
    assert torch.equal(out[:, 0], out[:, 2])  # the same square on every channel


def test_resized_crop_keeps_shape_and_range():
    x = _batch()
    out = random_resized_crop(x, _gen(), scale=(0.5, 1.0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)
    # scale (1, 1) with aspect 1 is the identity up to interpolation at exact pixel centres
    same = random_resized_crop(x, _gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5)


def test_augment_is_reproducible_from_the_generator():
    aug = Augment(crop="pad", flip=True, cutout=4)
    x = _batch()
    assert torch.equal(aug(x, _gen(3)), aug(x, _gen(3)))
    assert not torch.equal(aug(x, _gen(3)), aug(x, _gen(4)))


def test_loader_visits_every_image_once_per_epoch_in_a_new_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    data = ImageSet(images, torch.arange(10))
    loader = DeviceLoader(data, batch_size=4, shuffle=True, generator=_gen())
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert len(loader) == 3
    assert all(sorted(e.tolist()) == list(range(10)) for e in epochs) and not torch.equal(*epochs)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and torch.allclose(x[:, 0, 0, 0] * 255, y.float())  # [0, 1], matching labels
    assert len(DeviceLoader(data, batch_size=4, drop_last=True)) == 2


@pytest.mark.parametrize("crop, flip", [("pad", True), ("pad", False), ("none", True), ("resized", True)])
def test_bound_augment_draws_augmented_copies_of_the_indexed_images(crop, flip):
    images = (torch.rand(30, 3, 8, 8, generator=_gen(5)) * 255).to(torch.uint8)
    draw = Augment(crop=crop, pad=2, flip=flip).bind(images)
    index = torch.tensor([4, 0, 29, 4, 17])
    out = draw(index, _gen())
    assert out.dtype == torch.uint8 and out.shape == (5, 3, 8, 8)
    if crop == "resized":
        return
    pad = 2 if crop == "pad" else 0
    for o, i in zip(out, index):
        padded = torch.nn.functional.pad(images[i], (pad,) * 4)
        candidates = [p[:, dy:dy + 8, dx:dx + 8] for p in (padded, padded.flip(2)) for dy in range(2 * pad + 1)
                      for dx in range(2 * pad + 1)]
        assert any(torch.equal(o, c) for c in candidates[: None if flip else len(candidates) // 2])
