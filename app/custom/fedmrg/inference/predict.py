"""One loaded model that writes a draft report and the 14 observation states for radiograph files.

>>> p = Predictor.load("runs/demo/models/site-1")          # any source fedmrg.inference.sources reads
>>> [pred] = p.predict_files(["study.dcm"])                 # personalized when the model has a site adapter
>>> pred.report, pred.observations[0]
('the heart is normal in size ...', {'name': 'Enlarged Cardiomediastinum', 'state': 'negative', 'probability': 0.91,
 ...})
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmrg.report.checkpoint import LoadedRun


@dataclass
class Prediction:
    """What the model says about one image.

    Attributes:
        image: the image's name (its path for files).
        report: the draft report.
        adapter: ``"generic"`` (G alone) or ``"mixed"`` (G with ``site``'s specialized adapter S).
        site: the site whose specialized adapter was used, or None.
        observations: 14 entries ``{"name", "state", "probability", "probabilities"}`` (``probability`` of the
            predicted state; ``probabilities`` over blank / positive / negative / uncertain), or None when the
            method has no diagnosis head.
    """

    image: str
    report: str
    adapter: str
    site: str | None
    observations: list[dict[str, Any]] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Predictor:
    """A loaded model (:class:`~fedmrg.report.checkpoint.LoadedRun`) turned into a report writer.

    Args:
        loaded: the model; its specialized adapter (if any) is used unless a call asks for ``generic_only``.
    """

    def __init__(self, loaded: LoadedRun) -> None:
        from fedmrg.data.images import image_transform

        self.loaded = loaded
        self.model = loaded.model
        self.device = next(self.model.parameters()).device
        self._to_model = image_transform(loaded.config.model.encoder.image_size)

    @classmethod
    def load(cls, path: str | Path, *, site: str | None = None, generic_only: bool = False,
             device: str | torch.device = "cpu") -> Predictor:  # fmt: skip
        """:func:`~fedmrg.report.export.load_model` (any source), wrapped."""
        from fedmrg.report.export import load_model

        return cls(load_model(path, site=site, generic_only=generic_only, device=device))

    @property
    def has_personalized(self) -> bool:
        """Whether a specialized adapter is loaded (personalized predictions differ from generic ones)."""
        return self.loaded.private_site is not None

    @torch.no_grad()
    def predict_arrays(
        self,
        arrays: Sequence[np.ndarray],
        names: Sequence[str],
        *,
        generic_only: bool = False,
        num_beams: int | None = None,
        rerank_samples: int | None = None,
    ) -> list[Prediction]:
        """Reports for grey-level images ``float32 (H, W)`` in [0, 1] (:func:`fedmrg.data.images.load_image`);
        ``num_beams`` / ``rerank_samples`` override the model's ``generation`` settings."""
        from fedmrg.report.evaluation import describe_states

        if not arrays:
            return []
        images = torch.stack([self._to_model(a) for a in arrays]).to(self.device)
        generic = generic_only or not self.has_personalized
        kwargs = {"num_beams": num_beams} if num_beams else {}
        if rerank_samples is not None:
            kwargs["rerank_samples"] = rerank_samples
        gen = self.model.generate(images, generic_only=generic, **kwargs)
        described = describe_states(gen.states, gen.state_probs)
        out = []
        for i, (name, report) in enumerate(zip(names, gen.reports, strict=True)):
            obs = None
            if described is not None:
                obs = [{"name": k, "state": v["state"], "probability": v["probabilities"][v["state"]],
                        "probabilities": v["probabilities"]} for k, v in described[i].items()]  # fmt: skip
            out.append(Prediction(name, report, "generic" if generic else "mixed",
                                  None if generic else self.loaded.private_site, obs))  # fmt: skip
        return out

    def predict_files(
        self, paths: Sequence[str | Path], *, generic_only: bool = False, num_beams: int | None = None,
        rerank_samples: int | None = None, batch_size: int = 8,
    ) -> list[Prediction]:  # fmt: skip
        """Reports for image files (PNG / JPEG / BMP / DICOM); DataError naming the first unreadable file."""
        from fedmrg.data.image_checks import modality_problem
        from fedmrg.data.images import load_image

        arrays = [load_image(p) for p in paths]  # all read first: a bad file stops the batch before any work
        for p in paths:
            problem = modality_problem(p)
            if problem:  # the model reads chest radiographs: say so, the report is written all the same
                warnings.warn(
                    f"{p}: {problem}; the model was trained on chest radiographs, so the report is unreliable",
                    stacklevel=2,
                )
        out: list[Prediction] = []
        for i in range(0, len(arrays), batch_size):
            out += self.predict_arrays(arrays[i : i + batch_size], [str(p) for p in paths[i : i + batch_size]],
                                       generic_only=generic_only, num_beams=num_beams,
                                       rerank_samples=rerank_samples)  # fmt: skip
        return out
