"""Typed configuration of a vision run (the ``learner_args`` of the vision jobs), checked by :func:`fedmrg.config.from_dict`.

Methods (``method``), all through the same federated code path (:class:`~fedmrg.vision.learner.VisionLearner`):

- ``prompt_gen``: the system (per-image prompts from the shared generator, frozen backbone);
- ``vpt``: static prompts averaged across sites (VPT-shallow), frozen backbone;
- ``full_ft``: full fine-tuning of the backbone under FedAvg;
- ``cnn``: MONAI ``DenseNet121`` / ``UNet`` from scratch under FedAvg;
- ``local``: the system's model, each site trains alone (the global model is ignored after round 0);
- ``centralized``: the system's model on all sites' training data at one site (run the job with one site).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from fedmrg.config import from_dict
from fedmrg.errors import ConfigError

TaskName = Literal["retina", "melanoma", "polyp", "prostate", "synthetic_cls", "synthetic_seg"]
MethodName = Literal["prompt_gen", "vpt", "full_ft", "cnn", "local", "centralized"]
DEFAULT_LR = {"prompt_gen": 2e-3, "vpt": 2e-3, "full_ft": 2e-4, "cnn": 1e-3, "local": 2e-3, "centralized": 2e-3}


@dataclass
class VisionConfig:
    """One vision run.

    Attributes:
        task: the task (see :data:`fedmrg.vision.data.TASK_KINDS`); ``synthetic_*`` when no data is given.
        method: see the module docstring.
        backbone: ``"builtin"`` or a local folder written by ``save_pretrained`` (ViT for classification, SAM or ViT
            for segmentation).
        num_prompts: K, prompt tokens per image.
        generator_heads: attention heads of the prompt generator.
        num_sites: training sites the data is partitioned into (``centralized``: 1).
        dirichlet_alpha: label skew of the classification partitions (smaller = more skewed).
        val_fraction: share of each site's groups kept for validation.
        data_fraction: share of each site's training groups used (0.05 = the "5 % data" setting).
        synthetic_samples: images of a synthetic task.
        rounds: federated rounds (for the learning-rate schedule; the workflow's ``num_rounds`` must match).
        local_steps: optimizer steps per round.
        batch_size: images per step.
        lr: learning rate; None: the method's default (:data:`DEFAULT_LR`).
        weight_decay: AdamW weight decay.
        cnn_image_size: input size of the CNN baselines (ViT / SAM use the backbone's size).
        eval_max_images: cap on images per evaluated split (0: all).
        seed: seed of the initialisation, the partitions and the batches.
        torch_threads: CPU threads of a site (0: torch's default).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    """

    task: TaskName = "synthetic_seg"
    method: MethodName = "prompt_gen"
    backbone: str = "builtin"
    num_prompts: int = 8
    generator_heads: int = 4
    num_sites: int = 3
    dirichlet_alpha: float = 0.5
    val_fraction: float = 0.2
    data_fraction: float = 1.0
    synthetic_samples: int = 600
    rounds: int = 10
    local_steps: int = 20
    batch_size: int = 16
    lr: float | None = None
    weight_decay: float = 0.01
    cnn_image_size: int = 64
    eval_max_images: int = 0
    seed: int = 0
    torch_threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in (
            "num_prompts",
            "generator_heads",
            "num_sites",
            "rounds",
            "local_steps",
            "batch_size",
            "synthetic_samples",
            "cnn_image_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if not 0 < self.data_fraction <= 1:
            raise ValueError(f"`data_fraction` must be in (0, 1], got {self.data_fraction}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {self.val_fraction}")
        if self.method == "centralized" and self.num_sites != 1:
            raise ValueError(
                "`method` centralized pools all training data at one site: set `num_sites` to 1 and "
                "run the job with one site"
            )

    @property
    def model_method(self) -> str:
        """The model's method (``local`` and ``centralized`` train the system's model)."""
        return "prompt_gen" if self.method in ("local", "centralized") else self.method

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_vision_config(data: dict[str, Any], source: str = "learner_args") -> VisionConfig:
    """:class:`VisionConfig` from a mapping; ConfigError naming ``source`` and the key on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping, got {type(data).__name__}")
    return from_dict(VisionConfig, data, source=source)
