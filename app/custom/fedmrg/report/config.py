"""Configuration of the FedMRG report-generation model: one dataclass tree, loadable from YAML.

Load with :func:`fedmrg.config.load_config` (``load_config("fedmrg.yaml", FedMRGConfig)``); the same file serves the
CLI and the FLARE executors. Each section is a dataclass whose ``__post_init__`` rejects bad values and whose messages
name the dotted key; rules that span sections live in :meth:`FedMRGConfig.__post_init__`.

Example (YAML)::

    method: fedmrg
    encoder: {preset: resnet-101, image_size: 224}
    decoder: {path: /models/llama-2-7b-chat-hf, mode: auto, dtype: bfloat16}
    adapter: {r: 16, alpha: 16, dropout: 0.1, target_modules: [q_proj, v_proj]}
    losses: {lambda_cls: 4.0, lambda_con: 1.0, lambda_kd: 1.0, temperature: 0.07}
    ablations: {no_contrastive: false}
    alpha_mix: 0.5
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fedmrg.privacy.dp_config import PrivacyConfig

Method = Literal["fedmrg", "fedlora", "fedprompt", "fedprefix", "fedvera", "fedadalora", "fedpara", "promptmrg", "full"]
METHODS: tuple[str, ...] = (
    "fedmrg",
    "fedlora",
    "fedprompt",
    "fedprefix",
    "fedvera",
    "fedadalora",
    "fedpara",
    "promptmrg",
    "full",
)
PromptEncoder = Literal["mlp", "none"]
EncoderPreset = Literal["resnet-tiny", "resnet-18", "resnet-50", "resnet-101"]
DecoderMode = Literal["auto", "llm", "clm"]
DType = Literal["float32", "bfloat16", "float16"]
VisualPosition = Literal["before_prompt", "after_prompt"]

#: Config schema version, written into results so a later reader knows which fields existed.
CONFIG_VERSION = 1
#: The smallest image side the encoder accepts (ResNet's total stride), in pixels.
MIN_IMAGE_SIZE = 32


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass
class EncoderConfig:
    """Visual encoder (paper 3.1.2: ImageNet ResNet-101, patch features at 224 px).

    Args:
        type: encoder family; only ``"hf-resnet"`` (transformers ``ResNetModel``).
        preset: architecture built from a ``ResNetConfig`` when ``path`` is None (random weights):
            ``"resnet-tiny"`` (tests), ``"resnet-18"``, ``"resnet-50"``, ``"resnet-101"``.
        path: local Hugging Face directory of a ResNet (``ResNetModel`` or ``ResNetForImageClassification``
            weights, e.g. a saved ``microsoft/resnet-101``); when set, ``preset`` is ignored.
        image_size: side of the square input images in pixels (the data pipeline resizes to it).
        trainable: train (and share) the encoder; False keeps it frozen and out of the shared state.
    """

    type: Literal["hf-resnet"] = "hf-resnet"
    preset: EncoderPreset = "resnet-101"
    path: str | None = field(default=None, metadata={"path": "dir"})
    image_size: int = 224
    trainable: bool = True

    def __post_init__(self) -> None:
        _check(
            self.image_size >= MIN_IMAGE_SIZE,
            f"`encoder.image_size` must be >= {MIN_IMAGE_SIZE}, got {self.image_size}",
        )


@dataclass
class DecoderConfig:
    """Causal language model decoder (paper 3.1.3, 4.2).

    Args:
        path: local Hugging Face causal-LM directory (``config.json`` + weights + tokenizer); required.
        mode: ``"llm"`` freezes the decoder and trains adapters only; ``"clm"`` trains and shares all decoder
            weights; ``"auto"`` picks ``"llm"`` for >= 1e9 parameters and ``"clm"`` below (paper 4.2).
        dtype: weights dtype of the decoder (``"float32"`` on CPU; ``"bfloat16"`` for a 7B model on GPU).
        max_report_tokens: report length cap in tokens, EOS included (longer reports are truncated).
        visual_position: where the visual tokens enter the decoder input: ``"before_prompt"`` (the paper's order,
            visual tokens then diagnosis prompt then BOS) or ``"after_prompt"`` (diagnosis prompt, visual tokens,
            BOS: the prompt's hidden states are then those of the prompt alone, see ``fedmrg.report.prompt_layout``).
    """

    path: str = field(default="", metadata={"path": "dir"})
    mode: DecoderMode = "auto"
    dtype: DType = "float32"
    max_report_tokens: int = 100
    visual_position: VisualPosition = "before_prompt"

    def __post_init__(self) -> None:
        _check(bool(self.path), "`decoder.path` is required: a local Hugging Face causal-LM directory")
        _check(self.max_report_tokens >= 2, f"`decoder.max_report_tokens` must be >= 2, got {self.max_report_tokens}")


@dataclass
class AdapterConfig:
    """Parameter-efficient adapters (PEFT). LoRA defaults are R2GenGPT's (r=16, alpha=16, dropout 0.1, q/v).

    Args:
        r: LoRA rank (also the rank of each of the generic / specialized adapters).
        alpha: LoRA ``lora_alpha``; the update is scaled by ``alpha / r``.
        dropout: LoRA dropout probability in [0, 1).
        target_modules: names of the decoder's linear layers that get LoRA / VeRA.
        num_virtual_tokens: number of virtual tokens for ``fedprompt`` / ``fedprefix`` (the paper's Comm. column
            implies 200 at Llama-2-7B scale, see ``llama2-7b.yaml`` and docs/benchmark.md).
        vera_r: rank of VeRA's shared random projections (``fedvera``).
        prompt_encoder: reparametrisation of ``fedprompt``'s virtual tokens: ``"mlp"`` is PEFT's
            ``PromptEncoderConfig`` (P-tuning MLP, 3 linear layers of width d_model, trained and shared with the
            token embeddings; the paper's 102M at Llama-2-7B = 51M base + 200 x 4096 + 3 x 4096^2 weights and
            biases); ``"none"`` is Lester et al.'s plain prompt tuning (PEFT ``PromptTuningConfig``).
        prefix_projection: PEFT ``PrefixTuningConfig.prefix_projection`` for ``fedprefix`` (an MLP of width
            d_model over the prefix). Off by default: the paper's 103M at Llama-2-7B is 51M base + the raw
            prefix, 200 tokens x 2 (key, value) x 32 layers x 4096.
        adalora_init_r: initial rank of AdaLoRA's SVD-form adapter (``fedadalora``; PEFT's default 12).
        loha_r: rank of each of LoHa's two low-rank factors (``fedpara``; FedPara's Hadamard product
            W = (X1 Y1^T) * (X2 Y2^T)); 24 on q/v gives the paper's 76M at Llama-2-7B.
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    num_virtual_tokens: int = 16
    vera_r: int = 256
    prompt_encoder: PromptEncoder = "mlp"
    prefix_projection: bool = False
    adalora_init_r: int = 12
    loha_r: int = 24

    def __post_init__(self) -> None:
        _check(self.r > 0, f"`adapter.r` must be a positive int, got {self.r}")
        _check(self.alpha > 0, f"`adapter.alpha` must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"`adapter.dropout` must be in [0, 1), got {self.dropout}")
        _check(self.num_virtual_tokens > 0, f"`adapter.num_virtual_tokens` must be > 0, got {self.num_virtual_tokens}")
        _check(self.vera_r > 0, f"`adapter.vera_r` must be > 0, got {self.vera_r}")
        _check(
            self.prompt_encoder in ("mlp", "none"),
            f"`adapter.prompt_encoder` must be 'mlp' or 'none', got {self.prompt_encoder!r}",
        )
        _check(self.adalora_init_r > 0, f"`adapter.adalora_init_r` must be > 0, got {self.adalora_init_r}")
        _check(self.loha_r > 0, f"`adapter.loha_r` must be > 0, got {self.loha_r}")


@dataclass
class LossConfig:
    """Loss weights: L = L_lm + lambda_cls * L_cls + lambda_con * L_con + lambda_kd * L_kd.

    Args:
        lambda_cls: weight of the diagnosis cross-entropy (PromptMRG uses 4).
        lambda_con: weight of the client-aware contrastive loss (paper eq. 3).
        lambda_kd: weight of each distillation loss (cosine on hidden states + KL on logits, eq. 4-5).
        temperature: contrastive temperature tau (paper 4.2: 0.07).
        kd_temperature: softmax temperature of the KL term (1 = plain KL).
        logit_adjustment: tau of PromptMRG's logit-adjusted diagnosis loss: in training, ``tau * log(p_pos)`` is
            added to each observation's [POS] logit, ``p_pos`` being the site's own positive rate (Laplace-smoothed,
            from its training labels; it never leaves the site); inference uses the raw logits, so rare findings
            are predicted positive more often (Menon et al., ICLR 2021). 0 = plain cross-entropy.
        finding_weight: LM-loss weight of the report tokens in sentences that state a finding (a positive or
            uncertain mention of one of the 13 findings, by the rule-based labeler, sentence by sentence); the other
            tokens weigh 1 and the loss is the weighted mean per token. On real reports most tokens belong to normal
            sentences ("the lungs are clear."), so a plain mean teaches the decoder the templates and barely the
            finding phrases its prompt asks for (docs/results/findings.md). 1 = plain mean (the paper's eq. 1).
    """

    lambda_cls: float = 4.0
    lambda_con: float = 1.0
    lambda_kd: float = 1.0
    temperature: float = 0.07
    kd_temperature: float = 1.0
    logit_adjustment: float = 0.0
    finding_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lambda_cls", "lambda_con", "lambda_kd", "logit_adjustment"):
            value = getattr(self, name)
            _check(value >= 0, f"`losses.{name}` must be >= 0, got {value}")
        _check(self.finding_weight > 0, f"`losses.finding_weight` must be > 0, got {self.finding_weight}")
        _check(self.temperature > 0, f"`losses.temperature` must be > 0, got {self.temperature}")
        _check(self.kd_temperature > 0, f"`losses.kd_temperature` must be > 0, got {self.kd_temperature}")


@dataclass
class MemoryBankConfig:
    """Global memory bank of pooled features from other sites (paper 3.2.1), as the sites use it.

    The bank itself lives on the server (:class:`~fedmrg.fl.extra_payload_relay.ExtraPayloadRelay`): its capacity per
    site is the relay's ``max_items_per_site`` in the job, not a learner setting.

    Args:
        negatives_per_step: bank features sampled as extra negatives for each training step.
        upload_per_round: pooled features a site samples from its data and uploads each round. These are
            patient-derived: count them in the privacy design (0 disables the upload).
    """

    negatives_per_step: int = 64
    upload_per_round: int = 32

    def __post_init__(self) -> None:
        _check(
            self.negatives_per_step >= 0,
            f"`memory_bank.negatives_per_step` must be >= 0, got {self.negatives_per_step}",
        )
        _check(self.upload_per_round >= 0, f"`memory_bank.upload_per_round` must be >= 0, got {self.upload_per_round}")


@dataclass
class AblationConfig:
    """Switches that remove one FedMRG component (paper 4.4.1); valid only with ``method: fedmrg``.

    Args:
        no_contrastive: drop the client-aware contrastive loss (and the memory bank).
        no_specialized: drop the specialized adapter S (and with it both distillation terms).
        no_prompts: drop the diagnosis head and the [BLA]/[POS]/[NEG]/[UNC] prompt tokens.
        no_kd_s2g: drop the distillation from S into G (the G step uses only its LM loss).
        no_kd_g2s: drop the distillation from G into S (the S step uses only its LM loss).
    """

    no_contrastive: bool = False
    no_specialized: bool = False
    no_prompts: bool = False
    no_kd_s2g: bool = False
    no_kd_g2s: bool = False

    def enabled(self) -> list[str]:
        """Names of the switches that are on."""
        return [name for name, value in vars(self).items() if value]


@dataclass
class GenerationConfig:
    """Decoding defaults (R2GenGPT / PromptMRG: beam search with 3 beams).

    Args:
        num_beams: beam width (1 = greedy).
        max_new_tokens: longest report generated, in tokens.
        min_new_tokens: shortest report generated, in tokens.
        repetition_penalty: HF ``repetition_penalty`` (1.0 = none; R2GenGPT uses 2.0).
        rerank_samples: reports sampled per study besides the greedy / beam one; the candidate whose labels agree
            best with the diagnosis prompt's states is kept (:mod:`fedmrg.report.rerank`). 0 = off. Needs
            diagnosis prompts (``method: fedmrg`` or ``promptmrg``).
        rerank_temperature: sampling temperature of those candidates (> 0; lower stays closer to greedy).
    """

    num_beams: int = 3
    max_new_tokens: int = 100
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    rerank_samples: int = 0
    rerank_temperature: float = 0.5

    def __post_init__(self) -> None:
        _check(self.num_beams >= 1, f"`generation.num_beams` must be >= 1, got {self.num_beams}")
        _check(self.max_new_tokens >= 1, f"`generation.max_new_tokens` must be >= 1, got {self.max_new_tokens}")
        _check(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            f"`generation.min_new_tokens` must be in [0, max_new_tokens={self.max_new_tokens}], "
            f"got {self.min_new_tokens}",
        )
        _check(
            self.repetition_penalty > 0, f"`generation.repetition_penalty` must be > 0, got {self.repetition_penalty}"
        )
        _check(self.rerank_samples >= 0, f"`generation.rerank_samples` must be >= 0, got {self.rerank_samples}")
        _check(
            self.rerank_temperature > 0,
            f"`generation.rerank_temperature` must be > 0, got {self.rerank_temperature}",
        )


@dataclass
class FedMRGConfig:
    """The whole report-generation model: encoder, decoder, adapters, losses, method and ablations.

    Args:
        decoder: the causal LM (``decoder.path`` is required).
        method: ``"fedmrg"`` (dual LoRA adapters + contrastive + diagnosis prompts + mutual distillation);
            baselines ``"fedlora"`` (one LoRA), ``"fedprompt"`` (PEFT prompt tuning), ``"fedprefix"`` (PEFT prefix
            tuning), ``"fedvera"`` (PEFT VeRA), ``"fedadalora"`` (PEFT AdaLoRA at its initial rank),
            ``"fedpara"`` (PEFT LoHa: FedPara's low-rank Hadamard product), ``"promptmrg"`` (one LoRA adapter +
            diagnosis head and prompt tokens, no specialized adapter, no contrastive loss), ``"full"`` (no adapter: the whole decoder trains and travels, i.e.
            it is treated as a CLM whatever its size; ``decoder.mode: llm`` is rejected).
        encoder, adapter, losses, memory_bank, ablations, generation: see their classes.
        alpha_mix: weight of the generic adapter at inference at a participating site,
            h = W0 x + alpha * G(x) + (1 - alpha) * S(x) (paper eq. 6: 0.5).
        privacy: optional differential privacy (:class:`~fedmrg.privacy.dp_config.PrivacyConfig`), off by default.
        version: config schema version (:data:`CONFIG_VERSION`).
    """

    decoder: DecoderConfig
    method: Method = "fedmrg"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    memory_bank: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    ablations: AblationConfig = field(default_factory=AblationConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    alpha_mix: float = 0.5
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _check(self.method in METHODS, f"`method` must be one of {list(METHODS)}, got {self.method!r}")
        _check(0.0 <= self.alpha_mix <= 1.0, f"`alpha_mix` must be in [0, 1], got {self.alpha_mix}")
        _check(self.version == CONFIG_VERSION, f"`version` must be {CONFIG_VERSION}, got {self.version}")
        on = self.ablations.enabled()
        _check(
            self.method == "fedmrg" or not on,
            f"`ablations.{on[0] if on else ''}` applies only to `method: fedmrg`, got method {self.method!r}",
        )
        _check(
            not (self.method == "full" and self.decoder.mode == "llm"),
            "`method: full` trains and shares the whole decoder, which contradicts `decoder.mode: llm`; "
            "use `decoder.mode: clm` or `auto`",
        )
        _check(
            not (self.privacy.dp_sgd.enabled and self.uses_contrastive),
            "`privacy.dp_sgd.enabled` requires `ablations.no_contrastive: true`: the contrastive loss couples the "
            "studies of a batch (no per-study gradient) and its memory bank uploads raw patient-derived features",
        )
        _check(
            self.peft_type not in ("lora", "vera", "adalora", "loha") or bool(self.adapter.target_modules),
            f"`adapter.target_modules` must name at least one layer for `method: {self.method}`",
        )
        _check(
            self.generation.rerank_samples == 0 or self.uses_prompts,
            f"`generation.rerank_samples: {self.generation.rerank_samples}` ranks reports by agreement with the "
            f"diagnosis prompt, which `method: {self.method}`"
            f"{' with ablations.no_prompts' if self.method == 'fedmrg' else ''} does not have; set "
            "`generation.rerank_samples: 0` (default.yaml turns it on for FedMRG)",
        )

    # ---- derived switches (the model and trainer read these, never the raw flags) ----
    @property
    def peft_type(self) -> Literal["lora", "prompt", "prefix", "vera", "adalora", "loha", "none"]:
        """Which PEFT method adapts the decoder."""
        return {  # type: ignore[return-value]
            "fedmrg": "lora",
            "fedlora": "lora",
            "fedprompt": "prompt",
            "fedprefix": "prefix",
            "fedvera": "vera",
            "fedadalora": "adalora",
            "fedpara": "loha",
            "promptmrg": "lora",
            "full": "none",
        }[self.method]

    @property
    def uses_specialized(self) -> bool:
        """Dual adapters: generic G plus specialized S = S1 (frozen copy of G) + S2 (local)."""
        return self.method == "fedmrg" and not self.ablations.no_specialized

    @property
    def uses_prompts(self) -> bool:
        """Diagnosis head + 14 state tokens in the decoder prompt (FedMRG and the PromptMRG baseline)."""
        return self.method == "promptmrg" or (self.method == "fedmrg" and not self.ablations.no_prompts)

    @property
    def uses_contrastive(self) -> bool:
        """Client-aware contrastive loss with the global memory bank."""
        return self.method == "fedmrg" and not self.ablations.no_contrastive

    @property
    def kd_specialized_to_generic(self) -> bool:
        """Distil S into G in the G step (paper's L_kd^{s->g})."""
        return self.uses_specialized and not self.ablations.no_kd_s2g and self.losses.lambda_kd > 0

    @property
    def kd_generic_to_specialized(self) -> bool:
        """Distil G into S in the S step (paper's L_kd^{g->s})."""
        return self.uses_specialized and not self.ablations.no_kd_g2s and self.losses.lambda_kd > 0
