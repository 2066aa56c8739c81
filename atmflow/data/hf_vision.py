"""The papers' image classification tasks, read through Hugging Face ``datasets`` (offline).

==========  ==============================  ========  =================================================
task        default source (hub)            classes   split notes (docs/paper-scale.md)
==========  ==============================  ========  =================================================
cars        tanganke/stanford_cars          196       official train 8,144 / test 8,041
dtd         tanganke/dtd                    47        partition 1: train = train1 + val1, test = test1
eurosat     tanganke/eurosat                10        the literature's 21,600 / 2,700 split (below)
gtsrb       tanganke/gtsrb                  43        official train 26,640 / test 12,630
mnist-hf    ylecun/mnist                    10        official train 60,000 / test 10,000
resisc45    tanganke/resisc45               45        the split of Neumann et al. 2019 (train / test)
sun397      tanganke/sun397                 397       partition 1: 50 train + 50 test images per class
svhn        ufldl-stanford/svhn (cropped)   10        official train 73,257 / test 26,032
cifar100    uoft-cs/cifar100                100       official train 50,000 / test 10,000
==========  ==============================  ========  =================================================

A task's location (``data-sources``, ``dataset-dir``) may be a hub name, read from the Hugging Face
cache only (``hf-cache-dir``; never downloaded at run time), or a local folder: a
``DatasetDict.save_to_disk`` folder, or a folder that ``datasets.load_dataset`` reads (parquet
files, or ``imagefolder``: ``train/<class>/*.png``, ``test/<class>/*.png``). The image column is the
data set's one ``Image`` feature and the label column its one ``ClassLabel`` feature unless the task
names them. When a source has no ``test`` split (EuroSAT in some hub versions), a fixed 10% of
``train`` (torch ``randperm`` seed 0) becomes the test split, the literature's 80/10/10 proportion.
A ``validation`` split is folded into ``train`` for DTD (the literature trains on train1 + val1) and
otherwise ignored (atmflow draws its validation split from train, as the literature does).

Class names (what the zero-shot head's prompts say) follow the task-vector literature: the data
set's label names with ``_`` as spaces; EuroSAT's renamed to CLIP's; GTSRB's from CLIP's prompts.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atmflow.data.embedded import DataUnavailableError, RawTask
from atmflow.paths import is_local_path

DERIVED_TEST_FRACTION = 0.1


def _spaced(names: Sequence[str]) -> tuple[str, ...]:
    """Label names with ``_`` as spaces and path prefixes such as ``/a/`` removed."""
    return tuple(re.sub(r"^(/?[a-z]/)", "", n).replace("_", " ").strip() for n in names)


def _as_is(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(names)


# EuroSAT: the literature maps the folder names to the names CLIP's prompts use.
_EUROSAT_CLIP = {
    "annualcrop": "annual crop land", "forest": "forest", "herbaceousvegetation": "brushland or shrubland",
    "highway": "highway or road", "industrial": "industrial buildings or commercial buildings",
    "pasture": "pasture land", "permanentcrop": "permanent crop land",
    "residential": "residential buildings or homes or apartments", "river": "river", "sealake": "lake or sea",
}


def _squash(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _eurosat(names: Sequence[str]) -> tuple[str, ...]:
    clip_names = {_squash(v): v for v in _EUROSAT_CLIP.values()}
    out = []
    for n in names:
        key = _squash(n).removesuffix("area")
        if key not in _EUROSAT_CLIP and _squash(n) not in clip_names:
            raise DataUnavailableError(f"EuroSAT label {n!r} is not one of the 10 classes {list(_EUROSAT_CLIP)}")
        out.append(_EUROSAT_CLIP.get(key) or clip_names[_squash(n)])
    return tuple(out)


# GTSRB: class names of CLIP's prompts (openai/CLIP data/prompts.md), in label order (ClassId 0..42).
GTSRB_CLASSES = (
    "red and white circle 20 kph speed limit", "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit", "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit", "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit", "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit", "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing", "red and white triangle road intersection warning",
    "white and yellow diamond priority road", "red and white upside down triangle yield right-of-way", "stop",
    "empty red and white circle", "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry", "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning", "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning", "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning", "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit", "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory", "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory", "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
)


def _gtsrb(names: Sequence[str]) -> tuple[str, ...]:
    if len(names) != len(GTSRB_CLASSES):
        raise DataUnavailableError(f"GTSRB source has {len(names)} classes, expected {len(GTSRB_CLASSES)}")
    return GTSRB_CLASSES


@dataclass(frozen=True)
class HFImageTask:
    """How one paper task is read from a Hugging Face data set."""

    task: str
    hub: str  # default hub name
    config: str | None = None  # hub configuration (svhn: cropped_digits)
    image_column: str | None = None  # None: the one Image feature
    label_column: str | None = None  # None: the one ClassLabel feature
    class_names: Callable[[Sequence[str]], tuple[str, ...]] = _spaced
    fold_validation: bool = False  # DTD: train = train + validation
    about: str = ""


HF_IMAGE_TASKS: dict[str, HFImageTask] = {t.task: t for t in [
    HFImageTask("cars", "tanganke/stanford_cars", class_names=_as_is, about="Stanford Cars (196 models)"),
    HFImageTask("dtd", "tanganke/dtd", fold_validation=True, about="Describable Textures, partition 1"),
    HFImageTask("eurosat", "tanganke/eurosat", class_names=_eurosat, about="EuroSAT RGB land use"),
    HFImageTask("gtsrb", "tanganke/gtsrb", class_names=_gtsrb, about="German traffic signs"),
    HFImageTask("mnist-hf", "ylecun/mnist", about="MNIST 60k + 10k (the embedded 'mnist' is a 5k subset)"),
    HFImageTask("resisc45", "tanganke/resisc45", about="NWPU-RESISC45 remote sensing scenes"),
    HFImageTask("sun397", "tanganke/sun397", about="SUN397 scenes, partition 1"),
    HFImageTask("svhn", "ufldl-stanford/svhn", config="cropped_digits", about="Street View House Numbers"),
    HFImageTask("cifar100", "uoft-cs/cifar100", image_column="img", label_column="fine_label", class_names=_as_is,
                about="CIFAR-100 (fine labels)"),
]}


class ImageColumn:
    """The images of one split of a Hugging Face ``Dataset``, decoded (PIL) only when taken."""

    def __init__(self, dataset: Any, column: str) -> None:
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def take(self, indices: Sequence[int]) -> list[Any]:
        return list(self.dataset.select_columns([self.column])[list(indices)][self.column])


def fetch_command(task: HFImageTask, where: str) -> str:
    """The one command that writes the data set where atmflow reads it (on a machine with network)."""
    config = f", {task.config!r}" if task.config else ""
    return (f"python -c \"from datasets import load_dataset; "
            f"load_dataset({task.hub!r}{config}).save_to_disk({where!r})\"")


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face hub access switched off: hub names resolve from the local cache only (fast, and
    never a silent download of gigabytes by every client)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _open(task: HFImageTask, source: str, cache_dir: str) -> Any:
    """The source as a ``DatasetDict``; :class:`DataUnavailableError` if it is not there."""
    import datasets

    if is_local_path(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise DataUnavailableError(
                f"data set for task {task.task!r} not found: no folder {path}. Fetch it on a machine with "
                f"network and copy the folder here: {fetch_command(task, str(path))}")
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        if (path / "state.json").is_file():
            raise DataUnavailableError(f"{path} holds a single split (Dataset.save_to_disk); task {task.task!r} "
                                       "needs a DatasetDict with 'train' and 'test' splits")
        with hub_offline():
            return datasets.load_dataset(str(path), cache_dir=cache_dir or None)
    looked = cache_dir or datasets.config.HF_DATASETS_CACHE
    try:
        with hub_offline():
            return datasets.load_dataset(source, task.config, cache_dir=cache_dir or None)
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise DataUnavailableError(
            f"data set {source!r}{f' ({task.config})' if task.config else ''} for task {task.task!r} is not in "
            f"the Hugging Face cache {looked} (atmflow reads hub data sets offline; {type(err).__name__}). "
            f"Fetch it on a machine with network: {fetch_command(task, f'<dir>/{task.task}')} and set "
            f"dataset-dir='<dir>' (or data-sources='{task.task}=<dir>/{task.task}'); or fill the cache "
            f"there with: python -c \"from datasets import load_dataset; load_dataset({source!r}"
            f"{f', {task.config!r}' if task.config else ''}, cache_dir={str(looked)!r})\"") from err


def _column(features: Any, wanted: str | None, kind: str, task: str) -> str:
    if wanted is not None:
        if wanted not in features:
            raise DataUnavailableError(f"task {task!r}: the data set has no column {wanted!r} ({list(features)})")
        return wanted
    found = [name for name, f in features.items() if type(f).__name__ == kind]
    if len(found) != 1:
        raise DataUnavailableError(f"task {task!r}: expected one {kind} column, found {found} in {list(features)}")
    return found[0]


def load_hf_image_task(task: HFImageTask, source: str, cache_dir: str = "") -> RawTask:
    """Read the task's train and test splits (see module docstring)."""
    import datasets
    import torch

    dd = _open(task, source or task.hub, cache_dir)
    if "train" not in dd:
        raise DataUnavailableError(f"task {task.task!r}: source {source!r} has no 'train' split ({list(dd)})")
    train = dd["train"]
    if task.fold_validation and "validation" in dd:
        train = datasets.concatenate_datasets([train, dd["validation"]])
    image_col = _column(train.features, task.image_column, "Image", task.task)
    label_col = _column(train.features, task.label_column, "ClassLabel", task.task)
    names = list(train.features[label_col].names)
    labels = np.asarray(train[label_col], dtype=np.int64)
    if "test" in dd:
        test = dd["test"]
        test_labels = np.asarray(test[label_col], dtype=np.int64)
    else:  # e.g. EuroSAT versions with one split: a fixed 10% of train is the test split
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).numpy()
        n_test = int(len(train) * DERIVED_TEST_FRACTION)
        test, train = train.select(np.sort(order[:n_test])), train.select(np.sort(order[n_test:]))
        test_labels, labels = labels[np.sort(order[:n_test])], labels[np.sort(order[n_test:])]
    return RawTask(ImageColumn(train, image_col), labels, len(names), ImageColumn(test, image_col), test_labels,
                   task.class_names(names))
