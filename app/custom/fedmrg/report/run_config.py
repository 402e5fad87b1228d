"""The run configuration: the model (:class:`~fedmrg.report.config.FedMRGConfig`) plus a ``training`` section.

One YAML file serves ``fedmrg train``, ``fedmrg evaluate``, ``fedmrg inspect-model`` and the FLARE learner. Its top
level is a :class:`FedMRGConfig` (same keys) with one extra section, ``training`` (:class:`TrainingConfig`)::

    method: fedmrg
    encoder: {path: builtin, image_size: 128}
    decoder: {path: builtin}
    training: {batch_size: 8, learning_rate: 1.0e-3, local_epochs: 1}

Built-in models: ``encoder.path`` / ``decoder.path`` may be ``builtin`` (the default small Llama and ResNet of
:func:`fedmrg.report.builtin.ensure_builtin_models`, built once and cached) or ``builtin-tiny`` (the seconds-fast
recipe used by tests); ``encoder.path`` may also be ``builtin-ssl``: the built-in ResNet after self-supervised
pretraining on images the project renders (:mod:`fedmrg.report.builtin_encoder`, built once and cached). They are
resolved to cache directories when the file is loaded; :func:`run_config_to_dict`
writes the keyword back, so a saved run stays portable. Other relative paths resolve against the YAML file.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedmrg.config import from_dict, load_yaml
from fedmrg.errors import ConfigError
from fedmrg.report.config import FedMRGConfig

MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
#: Model-path keywords that name a built-in model instead of a directory.
BUILTIN_KEYWORDS: tuple[str, ...] = ("builtin", "builtin-tiny", "builtin-ssl")
#: Keywords valid for the encoder only (a pretrained variant of the built-in encoder).
ENCODER_ONLY_KEYWORDS: tuple[str, ...] = ("builtin-ssl",)
_BUILTIN_FIELDS = {("decoder", "path"): "decoder_dir", ("encoder", "path"): "encoder_dir"}


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass
class TrainingConfig:
    """Local training (paper 4.2: AdamW, weight decay 0.05, lr 5e-5 with a cosine schedule, batch 16).

    Args:
        batch_size: studies per micro-batch.
        grad_accum_steps: micro-batches per optimizer step (effective batch = ``batch_size * grad_accum_steps``).
        learning_rate: peak AdamW learning rate.
        head_lr_scale: the diagnosis head's peak learning rate as a multiple of ``learning_rate`` (same schedule).
        weight_decay: AdamW weight decay on matrices (none on biases, norms and token rows).
        balance_findings: exponent ``p`` of finding-balanced sampling: each micro-batch study is drawn (with
            replacement) with probability proportional to ``max_o (N / n_o) ** p`` over the observations ``o``
            positive in its labels (``n_o``: the site's training studies positive for ``o``, No Finding included;
            ``N``: all of them); 0 keeps a plain reshuffled pass per epoch. Not with DP-SGD (its accounting
            assumes Poisson sampling).
        warmup_steps: linear warm-up optimizer steps at the start of the schedule.
        min_lr_ratio: floor of the cosine schedule as a fraction of ``learning_rate`` (0 = decay to zero).
        rounds: rounds the cosine schedule spans (the FL job's ``num_rounds``; 1 for a centralized run).
        local_steps: optimizer steps per round; when None, ``local_epochs`` decides.
        local_epochs: passes over the local training data per round (fractions allowed; paper: about 0.02).
        max_grad_norm: gradient clipping norm per step (None = no clipping).
        mixed_precision: ``"auto"`` (bf16 autocast on a CUDA GPU that supports it and on a CPU with native bf16,
            e.g. AVX512-BF16; float32 otherwise, see :mod:`fedmrg.training.precision`), ``"no"``,
            ``"bf16"`` or ``"fp16"`` (with a gradient scaler; CUDA only).
        gradient_checkpointing: recompute decoder activations in the backward pass (less memory, ~30 % slower).
        augment: give each study a second randomly augmented view for the contrastive loss (only used when the
            method has it).
        cache_images: keep each study's preprocessed image in memory after its first load (about
            ``4 * image_size**2`` bytes per study).
        num_workers: DataLoader worker processes (0 = load in the training process).
        max_skipped_fraction: a round fails when more than this fraction of its micro-batches had a non-finite loss
            (each skipped micro-batch is counted and reported, never dropped silently).
        log_every: optimizer steps between TensorBoard / progress-bar loss updates.
        eval_batch_size: studies per batch when generating reports.
        head_calibration: ``"none"``, or ``"lda"``: after the last round the diagnosis head is replaced by the linear
            discriminant of the final encoder's pooled features, from statistics every site sums over its training
            studies (:mod:`fedmrg.report.head_calibration`; the remedy for heads that FedAvg cannot average under
            label skew). Runs in ``fedmrg bench`` (every row with a diagnosis head); not with DP-SGD.
        head_calibration_shrinkage: LDA covariance shrinkage, a fraction of its mean variance added to the diagonal.
        seed: seed of the model initialisation, data order, augmentation and dropout.
        device: ``"auto"`` (CUDA when available, else CPU), or a torch device string such as ``"cuda:1"``.
    """

    batch_size: int = 16
    grad_accum_steps: int = 1
    learning_rate: float = 5e-5
    head_lr_scale: float = 1.0
    weight_decay: float = 0.05
    balance_findings: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    rounds: int = 1
    local_steps: int | None = None
    local_epochs: float = 1.0
    max_grad_norm: float | None = 1.0
    mixed_precision: MixedPrecision = "auto"
    gradient_checkpointing: bool = False
    augment: bool = True
    cache_images: bool = True
    num_workers: int = 0
    max_skipped_fraction: float = 0.5
    log_every: int = 10
    eval_batch_size: int = 16
    head_calibration: Literal["none", "lda"] = "none"
    head_calibration_shrinkage: float = 0.01
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "rounds", "log_every", "eval_batch_size"):
            value = getattr(self, name)
            _check(value >= 1, f"`training.{name}` must be >= 1, got {value}")
        _check(self.learning_rate > 0, f"`training.learning_rate` must be > 0, got {self.learning_rate}")
        _check(self.head_lr_scale > 0, f"`training.head_lr_scale` must be > 0, got {self.head_lr_scale}")
        _check(self.weight_decay >= 0, f"`training.weight_decay` must be >= 0, got {self.weight_decay}")
        _check(
            0 <= self.balance_findings <= 2,
            f"`training.balance_findings` must be in [0, 2], got {self.balance_findings}",
        )
        _check(self.warmup_steps >= 0, f"`training.warmup_steps` must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1, f"`training.min_lr_ratio` must be in [0, 1], got {self.min_lr_ratio}")
        _check(
            self.local_steps is None or self.local_steps >= 1,
            f"`training.local_steps` must be >= 1 or null, got {self.local_steps}",
        )
        _check(self.local_epochs > 0, f"`training.local_epochs` must be > 0, got {self.local_epochs}")
        _check(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            f"`training.max_grad_norm` must be > 0 or null, got {self.max_grad_norm}",
        )
        _check(
            self.head_calibration in ("none", "lda"),
            f"`training.head_calibration` must be none or lda, got {self.head_calibration!r}",
        )
        _check(
            self.head_calibration_shrinkage >= 0,
            f"`training.head_calibration_shrinkage` must be >= 0, got {self.head_calibration_shrinkage}",
        )
        _check(self.num_workers >= 0, f"`training.num_workers` must be >= 0, got {self.num_workers}")
        _check(
            0 <= self.max_skipped_fraction < 1,
            f"`training.max_skipped_fraction` must be in [0, 1), got {self.max_skipped_fraction}",
        )


@dataclass
class RunConfig:
    """A loaded run configuration.

    Attributes:
        model: the model configuration (built-in keywords resolved to directories).
        training: the training section.
        builtin: which model paths were built-in keywords, e.g. ``{"decoder.path": "builtin"}``.
    """

    model: FedMRGConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    builtin: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(
            not (self.training.balance_findings > 0 and self.model.privacy.dp_sgd.enabled),
            "`training.balance_findings` > 0 cannot be combined with `privacy.dp_sgd.enabled`: DP-SGD's privacy "
            "accounting assumes Poisson sampling of studies, which weighted sampling breaks; set "
            "`training.balance_findings: 0`",
        )
        if self.training.head_calibration != "none":
            _check(
                self.model.uses_prompts,
                f"`training.head_calibration: {self.training.head_calibration}` calibrates the diagnosis head, which "
                f"`method: {self.model.method}` does not have; set `training.head_calibration: none`",
            )
            _check(
                not self.model.privacy.dp_sgd.enabled,
                "`training.head_calibration: lda` sends feature statistics of the training studies that DP-SGD does not "
                "protect; it cannot be combined with `privacy.dp_sgd.enabled`; set `training.head_calibration: none`",
            )


def resolve_builtin_paths(
    data: dict[str, Any], *, cache_root: str | Path | None = None, progress: bool = True
) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace ``builtin`` / ``builtin-tiny`` model paths in a raw config mapping by the cached directories.

    Returns the new mapping (the input is not changed) and ``{"decoder.path": keyword, ...}`` for what was replaced.
    Builds the models on first use (about 1.5 min for ``builtin`` on 2 cores, seconds for ``builtin-tiny``).
    """
    data = copy.deepcopy(data)
    wanted = {
        (section, key): data[section][key]
        for section, key in _BUILTIN_FIELDS
        if isinstance(data.get(section), dict) and data[section].get(key) in BUILTIN_KEYWORDS
    }
    if not wanted:
        return data, {}
    for (section, key), keyword in wanted.items():
        if keyword in ENCODER_ONLY_KEYWORDS and section != "encoder":
            raise ConfigError(f"`{section}.{key}: {keyword}` names an encoder; use builtin or a model folder")
    from fedmrg.report.builtin import ensure_builtin_models
    from fedmrg.report.builtin_recipe import tiny_recipe

    builds = {}
    for keyword in sorted(set(wanted.values())):
        recipe = tiny_recipe() if keyword == "builtin-tiny" else None
        builds[keyword] = ensure_builtin_models(cache_root, recipe=recipe, progress=progress)
    for (section, key), keyword in wanted.items():
        if keyword == "builtin-ssl":
            from fedmrg.report.builtin_encoder import ensure_ssl_encoder

            data[section][key] = str(ensure_ssl_encoder(builds[keyword].encoder_dir, cache_root, progress=progress))
            continue
        data[section][key] = str(getattr(builds[keyword], _BUILTIN_FIELDS[(section, key)]))
    return data, {f"{section}.{key}": keyword for (section, key), keyword in wanted.items()}


def run_config_from_dict(
    data: dict[str, Any],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    cache_root: str | Path | None = None,
    progress: bool = True,
) -> RunConfig:
    """Build a :class:`RunConfig` from a raw mapping (the YAML's content); ConfigError naming the key on problems."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    allowed = {f.name for f in dataclasses.fields(FedMRGConfig)} | {"training"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(f'`{k}`' for k in unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    data, builtin = resolve_builtin_paths(data, cache_root=cache_root, progress=progress)
    training_data = data.pop("training", None) or {}
    training = from_dict(TrainingConfig, training_data, source=source, base_dir=base_dir, _prefix="training.")
    model = from_dict(FedMRGConfig, data, source=source, base_dir=base_dir)
    try:
        return RunConfig(model=model, training=training, builtin=builtin)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_run_config(path: str | Path, *, cache_root: str | Path | None = None, progress: bool = True) -> RunConfig:
    """Load a run configuration YAML (see the module docstring); relative paths resolve against the file."""
    path = Path(path)
    return run_config_from_dict(
        load_yaml(path), source=str(path), base_dir=path.parent, cache_root=cache_root, progress=progress
    )


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The YAML-ready mapping of ``config``, built-in model paths written back as their keyword."""
    data = dataclasses.asdict(config.model)
    data["training"] = dataclasses.asdict(config.training)
    for dotted, keyword in config.builtin.items():
        section, key = dotted.split(".")
        data[section][key] = keyword
    return data


def packaged_config(name: str) -> Path:
    """Path of a configuration shipped with FedMRG (``default.yaml``, ``llama2-7b.yaml``) under ``report/configs``."""
    from importlib import resources

    path = Path(str(resources.files("fedmrg.report").joinpath("configs", name)))
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no packaged config {name!r}; available: {', '.join(available)}")
    return path
