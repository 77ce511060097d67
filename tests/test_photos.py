"""Photo data sets: Oxford-IIIT Pet in torchvision's layout (a 3-breed subset of the real files) and image
folders."""
import os

import pytest
from PIL import Image

from library.data import DatasetCorruptError, DatasetNotFoundError
from library.data.photos import PETS_RESOURCES, PhotoDataset, load_image_folder, load_pets


def test_pets_subset_gets_contiguous_labels_and_its_breed_names(pets_root):
    trainval, test = load_pets(pets_root, "trainval"), load_pets(pets_root, "test")
    assert len(trainval) == 24 and len(test) == 18
    assert trainval.classes == test.classes == ("Abyssinian", "American Bulldog", "Bengal")
    assert sorted(set(trainval.labels)) == [0, 1, 2]
    assert all(trainval.classes[y].split()[0].lower() in p.lower() for p, y in zip(trainval.paths, trainval.labels))


def test_pets_read_as_torchvision_reads_them(pets_root):
    """The split files are read here (torchvision's import costs a probe re-run a second); the same images,
    breed names and label order as torchvision's own class, whose download addresses we name."""
    from torchvision.datasets import OxfordIIITPet

    assert PETS_RESOURCES == OxfordIIITPet._RESOURCES
    for split in ("trainval", "test"):
        theirs, ours = OxfordIIITPet(str(pets_root), split=split), load_pets(pets_root, split)
        assert ours.paths == tuple(str(p) for p in theirs._images)
        assert ours.classes == tuple(theirs.classes)
        named = dict(zip(sorted(set(theirs._labels)), theirs.classes))  # a subset's labels are the breed ids
        assert [ours.classes[y] for y in ours.labels] == [named[y] for y in theirs._labels]


def test_a_garbled_pets_split_file_names_the_file_and_line(pets_root, tmp_path):
    import shutil

    copy = shutil.copytree(pets_root, tmp_path / "copy")
    with open(copy / "oxford-iiit-pet" / "annotations" / "test.txt", "a") as f:
        f.write("Bengal_9999 cat 1 3\n")
    with pytest.raises(DatasetCorruptError, match=r"test.txt, line 19"):
        load_pets(copy, "trainval")


def test_pets_fingerprint_follows_the_content_not_the_location(pets_root, tmp_path):
    import shutil

    moved = shutil.copytree(pets_root, tmp_path / "elsewhere")
    assert load_pets(moved, "test").fingerprint() == load_pets(pets_root, "test").fingerprint()
    assert load_pets(pets_root, "test").fingerprint() != load_pets(pets_root, "trainval").fingerprint()


def test_missing_pets_say_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.OxfordIIITPet._download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DatasetNotFoundError, match="annotations/trainval.txt") as error:
        load_pets(tmp_path, "test")
    assert "images.tar.gz" in str(error.value) and str(tmp_path / "oxford-iiit-pet") in str(error.value)


def test_shards_cover_the_set_once(pets_root):
    photos = load_pets(pets_root, "trainval")
    shards = photos.shards(5)
    assert sorted(i for s in shards for i in s) == list(range(len(photos)))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_image_folder_and_the_dataset_transform(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (40 + i, 30), (10, 20, 30)).save(tmp_path / cls / f"{i}.png")
    photos = load_image_folder(tmp_path)
    assert photos.classes == ("cats", "dogs") and photos.labels == (0, 0, 1, 1)
    image, label, index = PhotoDataset(photos, lambda im: im.size)[3]
    assert image == (41, 30) and label == 1 and index == 3
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope")


def test_a_job_given_no_images_takes_the_catalogs_photos_from_the_data_root_or_says_where_they_go(tmp_path,
                                                                                                  monkeypatch):
    """attack_images.py and inspect_pretrained.py run alone, as the catalog runs them (D1, C1), on the photos the
    campaign reads from <data root>/images; missing ones are named, with the folder and --images."""
    import subprocess
    import sys

    from conftest import REPO, load_job
    from library.campaign.schedule import synthetic_photos
    from library.data.photos import CATALOG_LABELS, CATALOG_PHOTOS, CORGI

    monkeypatch.setenv("CV_DATA_ROOT", str(tmp_path))
    attack, inspect = load_job("attack_images"), load_job("inspect_pretrained")
    with pytest.raises(DatasetNotFoundError, match=f"peppers.png.* not in {tmp_path / 'images'}.*--images="):
        attack.with_catalog_photos(attack.JobConfig())
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "inspect_pretrained.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert out.returncode == 2 and f"not in {tmp_path / 'images'}" in out.stderr and "Traceback" not in out.stderr

    folder = synthetic_photos(tmp_path / "images", CATALOG_PHOTOS)
    cfg = attack.with_catalog_photos(attack.JobConfig())
    assert cfg.images == tuple(str(folder / name) for name in CATALOG_PHOTOS)
    assert cfg.labels == CATALOG_LABELS and cfg.start == str(folder / CORGI)
    assert inspect.with_catalog_photos(inspect.JobConfig()).images == (str(folder / "peppers.png"), str(folder / CORGI))
    # the user's own images, classes and start stand, and a smoke test keeps its synthetic photo
    mine = attack.JobConfig(images=("a.png",), targets=(812,), labels=(1,), start="b.png")
    assert attack.with_catalog_photos(mine) == mine
    assert attack.with_catalog_photos(attack.JobConfig(start="b.png")).start == "b.png"
    assert attack.with_catalog_photos(attack.JobConfig(smoke_test=True)).images == ()
