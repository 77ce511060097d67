"""Photo data sets of variable-size images, kept as lists of files: Oxford-IIIT Pet (torchvision's layout and
download) and any image folder (class sub-folders, torchvision's ImageFolder). Pretrained backbones decode and
preprocess them with their own transform, so nothing here resizes anything.

A `PhotoSet` is picklable and cheap (paths and labels), so Ray tasks receive shards of it and open the files
themselves from shared storage.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .storage import DatasetCorruptError, DatasetFiles, DatasetNotFoundError, data_root, prepare

PETS_FOLDER = "oxford-iiit-pet"
PHOTOS_FOLDER = "images"  # <data root>/images: the catalog's photos, which jobs given no --images use
# The photos of C1, D1, D8 and D9 (the seeds' peppers and corgi, and two more), with their ImageNet classes
CATALOG_PHOTOS = ("peppers.png", "n02113023_Pembroke.JPEG", "coral_parrot.jpg", "cat_dog.png")
CATALOG_LABELS = (945, 263, 88, 243)  # bell pepper, Pembroke, macaw, bull mastiff
CORGI = "n02113023_Pembroke.JPEG"  # D8's start and D9's image


@dataclass(frozen=True)
class PhotoSet:
    """Image files with integer labels into `classes`."""

    name: str  # e.g. "oxford-iiit-pet/test"
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: list[int] | range, suffix: str = "") -> "PhotoSet":
        return PhotoSet(self.name + suffix, tuple(self.paths[i] for i in index), tuple(self.labels[i] for i in index),
                        self.classes)

    def shards(self, count: int) -> list[range]:
        """`count` contiguous index ranges of near-equal size covering the set (fewer if the set is smaller)."""
        count = max(1, min(count, len(self)))
        bounds = [round(i * len(self) / count) for i in range(count + 1)]
        return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def fingerprint(self) -> str:
        """A digest of what the set contains: file names, sizes and labels (not the absolute paths, so the same
        data staged under another root has the same fingerprint)."""
        h = hashlib.sha256(self.name.encode())
        for path, label in zip(self.paths, self.labels):
            h.update(f"{Path(path).name}:{os.path.getsize(path)}:{label};".encode())
        return h.hexdigest()[:16]


class PhotoDataset(torch.utils.data.Dataset):
    """(transformed image, label, index) for a PhotoSet, decoding with PIL as RGB."""

    def __init__(self, photos: PhotoSet, transform: Callable, index: range | None = None):
        self.photos, self.transform = photos, transform
        self.index = index if index is not None else range(len(photos))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        k = self.index[i]
        with Image.open(self.photos.paths[k]) as image:
            return self.transform(image.convert("RGB")), self.photos.labels[k], k


# torchvision's OxfordIIITPet._RESOURCES (tests check they agree), here so that naming them imports nothing
PETS_RESOURCES = (("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
                  ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
                   "95a8c909bbe2e81eed6a22bccdf3f68f"))


def _download_pets(root: Path) -> None:
    from torchvision.datasets import OxfordIIITPet

    OxfordIIITPet(str(root), split="trainval", download=True)


def pets_files() -> DatasetFiles:
    return DatasetFiles(
        name="Oxford-IIIT Pet",
        folder=PETS_FOLDER,
        files={"annotations/trainval.txt": None, "annotations/test.txt": None, "images": None},
        download=_download_pets,
        sources=[f"{url} (md5 {md5}): extract into {PETS_FOLDER}/" for url, md5 in PETS_RESOURCES],
    )


def load_pets(root: str | Path | None = None, split: str = "trainval", download: bool = True) -> PhotoSet:
    """Oxford-IIIT Pet's `split` (trainval or test) in torchvision's layout, downloaded once under the data root's
    lock. Labels are renumbered 0..K-1 over the breeds present, so a subset of the 37 breeds (such as a
    3-breed sample) has consistent labels and class names."""
    if split not in ("trainval", "test"):
        raise ValueError(f"Oxford-IIIT Pet has splits trainval and test, not {split!r}")
    root = data_root(root)
    spec = pets_files()
    spec = DatasetFiles(spec.name, spec.folder, {k: v for k, v in spec.files.items() if k != "images"},
                        spec.download, spec.sources)  # `images` is a folder: its files are checked below
    prepare(spec, root, download=download)
    splits = {name: _read_pets_split(root / PETS_FOLDER, name) for name in ("trainval", "test")}
    # both splits: the class numbering must be the same in each, also for a subset of the breeds
    names = {label: breed for rows in splits.values() for _, label, breed in rows}
    renumber = {label: i for i, label in enumerate(sorted(names))}
    paths = tuple(str(root / PETS_FOLDER / "images" / f"{image}.jpg") for image, _, _ in splits[split])
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise DatasetNotFoundError(f"{len(absent)} images listed in Oxford-IIIT Pet's {split}.txt are not in "
                                   f"{root / PETS_FOLDER / 'images'} (first: {Path(absent[0]).name})")
    return PhotoSet(f"{PETS_FOLDER}/{split}", paths, tuple(renumber[label] for _, label, _ in splits[split]),
                    tuple(names[label] for label in sorted(names)))


def _read_pets_split(folder: Path, split: str) -> list[tuple[str, int, str]]:
    """(image name, breed id, breed name) per line of annotations/<split>.txt ("Abyssinian_100 1 1 1": image,
    breed 1..37, species, breed within species), breed names as torchvision gives them ("American Pit Bull
    Terrier" from american_pit_bull_terrier_12). Read here rather than through torchvision's class: its import
    alone costs a second, which a probe re-run on cached features should not pay."""
    path = folder / "annotations" / f"{split}.txt"
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[1].isdigit():
            raise DatasetCorruptError(f"{path}, line {number}: expected '<image> <breed id> ...', got {line!r}; "
                                       f"replace the file with the one from the official archive")
        image, label = fields[0], int(fields[1])
        rows.append((image, label, " ".join(part.title() for part in image.rsplit("_", 1)[0].split("_"))))
    return rows


def load_image_folder(path: str | Path) -> PhotoSet:
    """Any folder with one sub-folder of images per class (torchvision's ImageFolder layout)."""
    from torchvision.datasets import ImageFolder

    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise DatasetNotFoundError(f"image folder {path} does not exist: expected <folder>/<class>/<image> files")
    folder = ImageFolder(str(path))
    return PhotoSet(f"folder:{path.name}", tuple(p for p, _ in folder.samples), tuple(y for _, y in folder.samples),
                    tuple(folder.classes))


def catalog_photos(names: tuple[str, ...], root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The paths of `names` in <data root>/images, for a job given no --images; the missing ones named, with
    where to put them."""
    folder = data_root(root) / PHOTOS_FOLDER
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(f"no --images given, and {', '.join(missing)} not in {folder}, where a job looks "
                                   "for the catalog's photos: put them there (README, Data) or pass "
                                   "--images=[path/to/photo.jpg,...]")
    return tuple(str(folder / name) for name in names)


def load_images(paths: list[str] | tuple[str, ...], transform: Callable) -> torch.Tensor:
    """Image files through `transform` (PIL RGB in, C×H×W tensor out), stacked; a missing file is named."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DatasetNotFoundError(f"image file(s) not found: {', '.join(map(str, missing))}")
    out = []
    for path in paths:
        with Image.open(path) as image:
            out.append(transform(image.convert("RGB")))
    return torch.stack(out)

