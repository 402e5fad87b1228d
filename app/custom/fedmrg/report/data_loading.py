"""Study records -> model samples: image loading, the site's device transform, augmentation, diagnosis states.

Per study (its first frontal image; PromptMRG uses one image per study)::

    load_image (H, W) [0, 1]  ->  site device transform (1, H, W)  ->  area resize to (1, S, S)   [cached]
        -> image_transform: 3 channels, ImageNet normalisation     -> sample["image"] (3, S, S) float32
        -> random augmentation, then image_transform               -> sample["view"]  (3, S, S) float32 (optional)

States come from ``record.labels`` or, for unlabelled records, the rule-based labeler (:mod:`fedmrg.labels`), once
at construction. Records that cannot train (no image, empty report) raise :class:`~fedmrg.errors.DataError` at
construction, listing them; an unreadable image raises when loaded, naming the file. Nothing is skipped silently.

Augmentation (second view for the contrastive loss, paper 3.2.1) is random but reproducible: each sample's draw is
seeded from ``(seed, epoch, index)``, so it does not depend on the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, SequentialSampler, WeightedRandomSampler

from fedmrg.data.images import image_transform, load_image
from fedmrg.data.records import StudyRecord
from fedmrg.errors import DataError
from fedmrg.observations import State
from fedmrg.report.diagnosis import states_from_labels

ImageFn = Callable[[np.ndarray], Any]


def record_image_path(record: StudyRecord) -> str:
    """The image a study trains on: its first frontal image, else its first image. DataError when it has none."""
    ref = record.frontal_image()
    if ref is None:
        raise DataError(f"study {record.study_id!r} has no image; report generation needs one per study")
    return ref.path


def states_for_records(records: Sequence[StudyRecord]) -> list[list[int]]:
    """14 diagnosis states per record (State order), from ``record.labels`` or by labeling the report."""
    missing = [i for i, r in enumerate(records) if r.labels is None]
    labelled: dict[int, dict[str, int | None]] = {}
    if missing:
        from fedmrg.labels import label_reports  # the labels area; imported only when a record lacks labels

        labelled = dict(zip(missing, label_reports([records[i].report for i in missing]), strict=True))
    out = []
    for i, r in enumerate(records):
        try:
            out.append(states_from_labels(r.labels if r.labels is not None else labelled[i]))
        except ValueError as e:
            raise DataError(f"study {r.study_id!r}: {e}") from e
    return out


def default_augmentation(image_size: int) -> Any:
    """MONAI chain for the second view, on ``(1, S, S)`` intensities in [0, 1]: a small random affine (rotation
    +-0.1 rad, scale +-10 %, shift +-6 % of the side), a random gamma (0.8-1.25) and light Gaussian noise, then clip
    to [0, 1]. Chosen mild because a radiograph's findings are position- and intensity-sensitive."""
    from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandGaussianNoise, ScaleIntensityRange

    shift = 0.06 * image_size
    return Compose(
        [
            RandAffine(
                prob=1.0,
                rotate_range=(0.1,),
                scale_range=(0.1, 0.1),
                translate_range=(shift, shift),
                padding_mode="border",
            ),
            RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
            RandGaussianNoise(prob=0.5, std=0.02),
            ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )


class ReportDataset(Dataset):
    """Samples for :class:`~fedmrg.report.tokenization.ReportCollator` from study records of one site.

    Args:
        records: the studies (image paths absolute, as :class:`~fedmrg.data.dataset_dir.FederatedDataset` gives).
        image_size: side S of the model's square input (``encoder.image_size``).
        site_transform: the site's device transform on ``(1, H, W)`` images in [0, 1] (``FederatedDataset.
            site_transform(site)``), or None for none.
        views: add a second augmented view to each sample (for the contrastive loss).
        seed: seed of the augmentation draws.
        cache_images: keep the deterministic part (load, device transform, resize) in memory after first use.

    A sample is ``{"image": (3, S, S) float32, "report": str, "states": list[int] (14), "study_id": str,
    "index": int}`` plus ``"view": (3, S, S) float32`` with ``views``.

    Raises:
        DataError: a record has no image or an empty report (lists up to five study ids and the count).
    """

    def __init__(
        self,
        records: Sequence[StudyRecord],
        *,
        image_size: int,
        site_transform: Callable[[Any], Any] | None = None,
        views: bool = False,
        seed: int = 0,
        cache_images: bool = True,
    ) -> None:
        self.records = list(records)
        no_image = [r.study_id for r in self.records if r.frontal_image() is None]
        empty = [r.study_id for r in self.records if not r.report.strip()]
        for what, ids in (("no image", no_image), ("an empty report", empty)):
            if ids:
                raise DataError(
                    f"{len(ids)} of {len(self.records)} studies have {what} and cannot train report generation, "
                    f"e.g. {ids[:5]}; remove them (fedmrg data prepare skips and counts such studies)"
                )
        self.states = states_for_records(self.records)
        self.image_size = image_size
        self.site_transform = site_transform
        self.views = views
        self.seed = seed
        self.epoch = 0
        self.cache_images = cache_images
        self._cache: dict[int, torch.Tensor] = {}
        self._to_model = image_transform(image_size)
        self._augment = default_augmentation(image_size) if views else None
        from monai.transforms import Resize

        self._resize = Resize((image_size, image_size), mode="area")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (call once per pass over the data)."""
        self.epoch = int(epoch)

    def base_image(self, index: int) -> torch.Tensor:
        """The study's image after loading, device transform and resize: ``(1, S, S)`` float32 in [0, 1]."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        path = record_image_path(self.records[index])
        arr = load_image(path)[None]  # (1, H, W)
        if self.site_transform is not None:
            arr = self.site_transform(arr)
        small = torch.as_tensor(np.asarray(self._resize(arr)), dtype=torch.float32)
        if self.cache_images:
            self._cache[index] = small
        return small

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        base = self.base_image(index)
        sample: dict[str, Any] = {
            "image": self._to_model(base[0]),
            "report": record.report,
            "states": self.states[index],
            "study_id": record.study_id,
            "index": index,
        }
        if self._augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            self._augment.set_random_state(seed=int(rng.integers(2**31 - 1)))
            view = torch.as_tensor(np.asarray(self._augment(base)), dtype=torch.float32)
            sample["view"] = self._to_model(view[0])
        return sample


def site_datasets(dataset: Dataset) -> list[ReportDataset]:
    """The :class:`ReportDataset` parts of ``dataset`` (itself, or the parts of a ``ConcatDataset``)."""
    if isinstance(dataset, ReportDataset):
        return [dataset]
    if isinstance(dataset, ConcatDataset):
        return [d for part in dataset.datasets for d in site_datasets(part)]
    return []


def finding_balance_weights(states: Sequence[Sequence[int]], power: float) -> torch.Tensor:
    """Sampling weight (N,) float64 of each study for finding-balanced sampling (``training.balance_findings``).

    A study weighs ``max_o (N / n_o) ** power`` over the observations ``o`` it is positive for, ``n_o`` being the
    number of the ``N`` studies positive for ``o`` (No Finding is an observation like the others); a study positive
    for none (all blank, negative or uncertain) weighs 1. ``power`` 0 gives equal weights; 1 draws each observation's
    positives about as often as the most frequent one's. Written by hand: torch's ``WeightedRandomSampler`` takes
    weights but no multi-label rule to make them.
    """
    s = torch.as_tensor(np.asarray(states, dtype=np.int64)).reshape(len(states), -1)
    positive = s == int(State.POSITIVE)  # (N, 14)
    counts = positive.sum(0).clamp(min=1).double()  # (14,)
    per_obs = (len(s) / counts) ** power  # (14,)
    w = torch.where(positive, per_obs, torch.zeros_like(per_obs)).amax(1)
    return torch.where(positive.any(1), w, torch.ones_like(w))


def make_loader(
    dataset: Dataset,
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    weights: torch.Tensor | None = None,
) -> DataLoader:
    """A DataLoader whose shuffling is drawn from a generator seeded with ``seed`` (reproducible order).

    ``weights`` (N,): draw ``N`` samples per pass with replacement, with these relative probabilities
    (``torch.utils.data.WeightedRandomSampler``; needs ``shuffle``).
    """
    generator = torch.Generator().manual_seed(seed)
    if weights is not None:
        if not shuffle or len(weights) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"`weights` needs shuffle=True and one weight per sample ({len(dataset)}), "  # type: ignore[arg-type]
                             f"got shuffle={shuffle} and {len(weights)}")  # fmt: skip
        sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
    else:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def open_split(
    data: Any,
    *,
    site: str | None,
    split: str,
    image_size: int,
    views: bool = False,
    seed: int = 0,
    cache_images: bool = True,
) -> Dataset:
    """A dataset over one split of a federated dataset directory, each study with its site's device transform.

    Args:
        data: a :class:`~fedmrg.data.dataset_dir.FederatedDataset` or its directory.
        site: a training site (``split`` ``"train"`` / ``"val"``) or an unseen site (``"test"``); None pools every
            training site's ``split`` (centralized training), or, for ``"test"``, the in-domain test set.
        split: ``"train"``, ``"val"`` or ``"test"``.

    An in-domain test study gets the device transform of the site named in its ``meta["site"]`` (written by
    :func:`fedmrg.data.partition.partition_from_groups`); a test study without a known site name gets none.
    """
    from fedmrg.data.dataset_dir import FederatedDataset

    fd = data if isinstance(data, FederatedDataset) else FederatedDataset.open(data)

    def part(records: Sequence[StudyRecord], transform_site: str | None) -> ReportDataset:
        transform = fd.site_transform(transform_site) if transform_site is not None else None
        return ReportDataset(
            records, image_size=image_size, site_transform=transform, views=views, seed=seed, cache_images=cache_images
        )

    if site is not None:
        return part(fd.split(site, split), site)
    if split == "test":
        records = fd.test()
        known = set(fd.sites) | set(fd.unseen_sites)
        groups: dict[str | None, list[StudyRecord]] = {}
        for r in records:
            name = r.meta.get("site")
            groups.setdefault(name if name in known else None, []).append(r)
        return ConcatDataset([part(recs, name) for name, recs in groups.items()])
    return ConcatDataset([part(fd.split(s, split), s) for s in fd.sites])


def dataset_records(dataset: Dataset) -> list[StudyRecord]:
    """The records behind ``dataset``, in index order (a :class:`ReportDataset` or a ``ConcatDataset`` of them)."""
    return [r for d in site_datasets(dataset) for r in d.records]
