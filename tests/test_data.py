import multiprocessing as mp
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torchvision.datasets import CIFAR10

from conftest import REPO, synthetic_images, write_cifar10, write_mnist
from library.data import (DATA_ROOT_ENV, DatasetCorruptError, DatasetNotFoundError, ImageSet, StagedCopyWarning,
                          data_root, load_cifar10, load_mnist, split_train_val)
from library.data.storage import DatasetFiles, prepare


class _RunsACommand:
    """A pickle payload that runs a shell command when loaded: what a tampered batch file in a shared root holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_booby_trapped_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    root = write_cifar10(tmp_path / "root")
    marker = tmp_path / "pwned"
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": _RunsACommand(marker), "labels": [0]}, f)
    with pytest.raises(DatasetCorruptError, match=r"data_batch_3 is not a CIFAR-10 batch .*system.*it was not run"):
        load_cifar10(root, val_size=10)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "wrong_dtype"])
def test_a_damaged_cifar_batch_says_which_file_to_replace(tmp_path, damage):
    root = write_cifar10(tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    if damage == "truncated":  # a full disk while copying
        path.write_bytes(path.read_bytes()[:5000])
    else:
        with open(path, "wb") as f:
            pickle.dump({"data": synthetic_images(4, 3, 32, seed=0)[0].reshape(4, -1).astype("float32"), "labels": [1] * 4}, f)
    with pytest.raises(DatasetCorruptError, match="test_batch .*official archive"):
        load_cifar10(root, val_size=10)


def test_cifar10_is_read_from_the_real_layout(tmp_path):
    cifar_root = write_cifar10(tmp_path)  # its own root: the staged-copy warning comes once per root and process
    with pytest.warns(StagedCopyWarning, match="differs from the official archive"):
        data = load_cifar10(cifar_root, val_size=50, seed=0)
    assert not data.verified  # our tiny files cannot carry the official md5 sums
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 32, 32)
    assert len(data.train) + len(data.val) == 300 and len(data.val) == 50 and len(data.test) == 100
    assert data.classes[0] == "airplane" and data.num_classes == 10
    # pixels and labels are exactly what was written (CIFAR rows are channel-major R, G, B planes)
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f)
    assert torch.equal(data.test.images[3].flatten(), torch.from_numpy(batch["data"][3]))
    assert data.test.labels.tolist() == batch["labels"]


def test_cifar10_files_are_torchvisions_and_reading_them_imports_no_torchvision(cifar_root, mnist_root):
    """The file table is written out here (torchvision's import brings torch._dynamo, ~1.5 s, into every job and
    Ray task that reads CIFAR-10 or MNIST or attacks a model); torchvision still downloads, through its own class."""
    from library.data import cifar

    assert (cifar.CIFAR10_FOLDER, cifar.CIFAR10_URL, cifar.CIFAR10_TGZ_MD5) == (CIFAR10.base_folder, CIFAR10.url,
                                                                              CIFAR10.tgz_md5)
    assert [list(f) for f in cifar.CIFAR10_TRAIN + cifar.CIFAR10_TEST] == CIFAR10.train_list + CIFAR10.test_list
    assert cifar.CIFAR10_META == (CIFAR10.meta["filename"], CIFAR10.meta["md5"])
    code = (f"import sys, warnings; warnings.simplefilter('ignore'); from library.data import load_cifar10; "
            f"import library.adversarial.robustness; load_cifar10({str(cifar_root)!r}, val_size=50); "
            f"from library.data import load_mnist; load_mnist({str(mnist_root)!r}, val_size=20); "
            f"assert not {{'torchvision', 'torch._dynamo'}} & set(sys.modules), sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_split_is_seeded_stratified_and_disjoint():
    images, labels = synthetic_images(200, 1, 4, seed=0)
    full = ImageSet(torch.from_numpy(images), torch.from_numpy(labels).long())
    train_a, val_a = split_train_val(full, 40, seed=1)
    train_b, val_b = split_train_val(full, 40, seed=1)
    _, val_c = split_train_val(full, 40, seed=2)
    assert torch.equal(val_a.images, val_b.images) and not torch.equal(val_a.images, val_c.images)
    assert len(train_a) == 160 and len(val_a) == 40
    assert val_a.labels.bincount(minlength=10).tolist() == [4] * 10
    seen = {bytes(x.numpy()) for x in torch.cat([train_a.images, val_a.images])}
    assert len(seen) == 200  # every image lands in exactly one split


def test_missing_data_says_which_files_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_cifar10(tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta", "cifar-10-python.tar.gz", DATA_ROOT_ENV):
        assert name in message


def test_failed_download_is_reported_with_its_cause(tmp_path, monkeypatch):
    # a real download attempt against a port where nothing listens: fails at once, as it does offline
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DatasetNotFoundError, match="could not be downloaded.*(URLError|refused)"):
        load_cifar10(tmp_path, download=True)


def test_data_root_comes_from_the_flag_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert data_root().is_absolute()


def _fake_download(root: Path) -> None:
    # a download that takes a moment and leaves a trace, so overlapping downloads would show
    import time

    with open(root / "downloads.log", "a") as log:
        log.write("x\n")
    time.sleep(0.5)
    (root / "toy").mkdir(exist_ok=True)
    (root / "toy" / "a.bin").write_bytes(b"a")


def _prepare_toy(root: str) -> bool:
    spec = DatasetFiles("toy", "toy", {"a.bin": None}, _fake_download)
    return prepare(spec, Path(root))


def test_concurrent_workers_download_once(tmp_path):
    with mp.get_context("spawn").Pool(4) as pool:
        assert all(pool.map(_prepare_toy, [str(tmp_path)] * 4))
    assert (tmp_path / "downloads.log").read_text() == "x\n"


def test_a_copy_with_official_checksums_is_verified_silently(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.bin").write_bytes(b"a")
    spec = DatasetFiles("toy", "toy", {"a.bin": "0cc175b9c0f1b6a831c399e269772661"}, _fake_download)  # md5("a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prepare(spec, tmp_path) is True


def test_mnist_is_read_from_the_real_idx_layout(tmp_path):
    mnist_root = write_mnist(tmp_path)  # its own root: the staged-copy warning comes once per root and process
    with pytest.warns(StagedCopyWarning):
        data = load_mnist(mnist_root, val_size=20)
    assert data.train.images.shape[1:] == (1, 28, 28) and len(data.train) == 180 and len(data.test) == 50
    assert data.train.images.dtype == torch.uint8 and set(data.test.labels.tolist()) <= set(range(10))
    # read here, as torchvision's class reads them (and names its first mirror as ours); a cut file is refused
    from torchvision.datasets import MNIST

    from library.data.mnist import MNIST_MIRROR, read_idx

    assert MNIST.mirrors[0] == MNIST_MIRROR
    theirs = MNIST(str(mnist_root), train=False)
    assert torch.equal(data.test.images[:, 0], theirs.data) and torch.equal(data.test.labels, theirs.targets)
    raw = mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-5])
    with pytest.raises(DatasetCorruptError, match="t10k-images-idx3-ubyte is not an MNIST idx file.*ossci"):
        read_idx(raw, 3)


def test_missing_mnist_says_which_files_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_mnist(tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", DATA_ROOT_ENV):
        assert name in message
