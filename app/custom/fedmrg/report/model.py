"""The FedMRG report-generation model: encoder -> projector -> visual tokens -> causal LM with adapters.

Components (paper section): visual encoder and projector (3.1.2), decoder with LoRA (3.1.3), diagnosis head and
prompt tokens (3.2.2), client-aware contrastive loss (3.2.1), dual adapters with mixed inference (3.3). The prompt
layout is documented in :mod:`fedmrg.report.prompt_layout`; the alternating G / S steps are in
:mod:`fedmrg.report.steps`; what travels to the server is declared in :mod:`fedmrg.report.shared_state`.

Example::

    >>> cfg = FedMRGConfig(decoder=DecoderConfig(path="/models/tiny-llama"), encoder=EncoderConfig(preset="resnet-tiny"))
    >>> model = FedMRGModel(cfg)
    >>> out = model(batch, adapter="generic")          # out.lm_loss, out.cls_loss, out.con_loss
    >>> gen = model.generate(batch["images"], max_new_tokens=60)   # gen.reports, gen.states, gen.state_probs
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from peft import PeftModel
from torch import nn
from transformers import GenerationConfig

from fedmrg.errors import DataError
from fedmrg.report.adapters import (
    GENERIC,
    SPEC_GLOBAL,
    SPEC_LOCAL,
    AdapterMode,
    activate,
    adapter_plan,
    attach_adapters,
    split_adapter_name,
)
from fedmrg.report.config import FedMRGConfig
from fedmrg.report.contrastive import client_aware_contrastive_loss
from fedmrg.report.decoder import LoadedDecoder, load_decoder
from fedmrg.report.diagnosis import DiagnosisHead, diagnosis_loss
from fedmrg.report.diagnosis_prompt import DiagnosisPrompt
from fedmrg.report.encoder import VisualEncoder
from fedmrg.report.losses import language_model_loss, target_positions
from fedmrg.report.projector import VisualProjector
from fedmrg.report.prompt_layout import DecoderInputs, layout_inputs, text_prompt_ids
from fedmrg.report.state_tokens import StateTokenEmbedding

Phase = Literal["generic", "specialized"]
Role = Literal[
    "encoder", "projector", "diagnosis_head", "state_tokens", "decoder", "generic", "spec_global", "spec_local"
]
_ADAPTER_ROLES = {GENERIC: "generic", SPEC_GLOBAL: "spec_global", SPEC_LOCAL: "spec_local"}


@dataclass
class EncodedImages:
    """Visual side of one batch.

    Attributes:
        tokens: (B, N, d_model) visual tokens for the decoder prompt.
        pooled: (B, C) pooled encoder features of the images.
        state_logits: (B, 14, 4) diagnosis logits, or None without diagnosis prompts.
        contrast_features: (2B, C) pooled features of images and their second views, or None without views.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    state_logits: torch.Tensor | None
    contrast_features: torch.Tensor | None


@dataclass
class FedMRGOutput:
    """Result of :meth:`FedMRGModel.forward`. Loss parts are unweighted; None when the component is off.

    Attributes:
        lm_loss: scalar report LM loss.
        cls_loss: scalar diagnosis cross-entropy, or None.
        con_loss: scalar contrastive loss (needs ``views`` in the batch), or None.
        logits: (B, L, V) decoder logits over the layout of :mod:`~fedmrg.report.prompt_layout`.
        hidden: (B, L, d_model) final-layer hidden states.
        labels: (B, L) int64 LM targets (-100 on prompt and padding).
        encoded: the visual side (reusable for a second pass on the same batch).
        label_weights: (B, L) float32 LM-loss weight of each label position (the batch's ``token_weights`` at the
            report positions), or None when the batch has none (every token weighs 1).
    """

    lm_loss: torch.Tensor
    cls_loss: torch.Tensor | None
    con_loss: torch.Tensor | None
    logits: torch.Tensor
    hidden: torch.Tensor
    labels: torch.Tensor
    encoded: EncodedImages
    label_weights: torch.Tensor | None = None

    @property
    def report_positions(self) -> torch.Tensor:
        """(B, L) bool: positions whose logits predict a report token (used by distillation)."""
        return target_positions(self.labels)


@dataclass
class GeneratedReports:
    """Result of :meth:`FedMRGModel.generate`.

    Attributes:
        reports: B decoded reports (special tokens removed, stripped).
        token_ids: (B, T') int64 generated ids (padded with the pad id after EOS).
        states: (B, 14) int64 predicted states (State order) used in the prompt, or None without prompts.
        state_probs: (B, 14, 4) float softmax of the diagnosis head, or None without prompts.
    """

    reports: list[str]
    token_ids: torch.Tensor
    states: torch.Tensor | None
    state_probs: torch.Tensor | None


class FedMRGModel(nn.Module):
    """Encoder, projector, diagnosis head, state-token embeddings and the adapted causal LM.

    Args:
        config: the whole model configuration; the decoder (and the encoder, when ``encoder.path`` is set) is
            loaded from local Hugging Face directories. Random parts use the global torch RNG: seed first.
        decoder: an already loaded decoder to use instead of loading ``config.decoder.path`` (e.g. one built on
            the meta device from a config alone, to count parameters without weights). Defaults to None.
    """

    def __init__(self, config: FedMRGConfig, *, decoder: LoadedDecoder | None = None) -> None:
        super().__init__()
        self.config = config
        # first: a wrong path fails before a large encoder is built
        loaded = load_decoder(config.decoder) if decoder is None else decoder
        self.encoder = VisualEncoder(config.encoder)
        self.tokenizer = loaded.tokenizer
        # `full` trains the whole decoder by definition, so it is a CLM whatever its size (`llm` is rejected by the
        # config); every other method follows `decoder.mode` / the parameter count.
        self.decoder_mode = "clm" if config.method == "full" else loaded.mode
        self.bos_token_id = loaded.bos_token_id
        self.state_token_ids = loaded.state_token_ids
        embedding = loaded.model.get_input_embeddings()
        self.projector = VisualProjector(self.encoder.out_dim, embedding.embedding_dim)
        self.diagnosis_head = DiagnosisHead(self.encoder.out_dim) if config.uses_prompts else None
        # no tokenizer: a model built on the meta device to count parameters; it never builds a prompt
        self.diagnosis_prompt = (
            DiagnosisPrompt(loaded.tokenizer, loaded.state_token_ids)
            if config.uses_prompts and loaded.tokenizer is not None
            else None
        )
        self.state_tokens = (
            StateTokenEmbedding(
                loaded.state_token_ids,
                embedding.weight,
                None
                if self.diagnosis_prompt is None
                else self.diagnosis_prompt.state_word_embeddings(embedding.weight),
            )
            if config.uses_prompts
            else None
        )
        self.decoder = attach_adapters(loaded.model, config)
        self._phase: Phase = "generic"
        self._adapters: AdapterMode = "generic"  # what the decoder runs now (attach_adapters leaves G active)
        # every parameter with its role, once: phases switch several times per step, and walking and parsing the
        # parameter names each time was 8 % of a demo step (cProfile)
        self._roles: list[tuple[nn.Parameter, Role]] = [(p, self.role_of(n)) for n, p in self.named_parameters()]
        self._apply_phase()

    # ------------------------------------------------------------------ structure
    @property
    def lm(self) -> nn.Module:
        """The underlying HF causal LM (adapters injected in place for LoRA / VeRA)."""
        return self.decoder.get_base_model() if isinstance(self.decoder, PeftModel) else self.decoder

    @property
    def has_specialized(self) -> bool:
        """True when the model has the specialized adapter S (dual-adapter FedMRG)."""
        return self.config.uses_specialized

    @property
    def decoder_trainable(self) -> bool:
        """True in CLM mode: all base decoder weights train in the G step and are shared."""
        return self.decoder_mode == "clm"

    def role_of(self, name: str) -> Role:
        """What a parameter of this model (``named_parameters`` name) is."""
        top = name.split(".", 1)[0]
        if top != "decoder":
            return top  # type: ignore[return-value]
        owner, _ = split_adapter_name(name)
        return _ADAPTER_ROLES[owner] if owner else "decoder"  # type: ignore[return-value]

    def is_trainable(self, role: Role, phase: Phase) -> bool:
        """Whether parameters of ``role`` train in ``phase`` ("generic" = G step, "specialized" = S step)."""
        if phase == "specialized":
            return role == "spec_local"
        if role == "encoder":
            return self.config.encoder.trainable
        if role == "decoder":
            return self.decoder_trainable
        return role in ("projector", "diagnosis_head", "state_tokens", "generic")

    def set_phase(self, phase: Phase) -> None:
        """Set ``requires_grad`` for the G step (everything shared) or the S step (S2 only)."""
        if phase not in ("generic", "specialized"):
            raise ValueError(f"`phase` must be 'generic' or 'specialized', got {phase!r}")
        if phase == "specialized" and not self.has_specialized:
            raise ValueError(f"`method: {self.config.method}` has no specialized adapter; no 'specialized' phase")
        self._phase = phase
        self._apply_phase()
        if self.has_specialized and self._adapters in ("generic", "specialized") and self._adapters != phase:
            # the phase's own adapters stay active until the next phase, so the backward pass (which recomputes the
            # forward under gradient checkpointing) runs the adapters the forward ran, not the teacher's
            self._switch_adapters(phase, adapter_plan(phase, alpha=self.config.alpha_mix))

    def _apply_phase(self) -> None:
        for param, role in self._roles:
            param.requires_grad_(self.is_trainable(role, self._phase))

    def train(self, mode: bool = True) -> FedMRGModel:
        """As :meth:`nn.Module.train`, except that a frozen encoder (``encoder.trainable: false``) stays in eval mode.

        A frozen ResNet in train mode would normalise each batch with that batch's own statistics (features that
        differ from the ones it is evaluated with) and overwrite its pretrained BatchNorm running statistics with
        the site's, which are not shared (the frozen encoder is out of the shared state): the diagnosis head would
        then train on features no other site and no evaluation sees.
        """
        super().train(mode)
        if mode and not self.config.encoder.trainable:
            self.encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter that trains in some phase (give these to the optimizer; frozen ones are left out)."""
        phases: tuple[Phase, ...] = ("generic", "specialized") if self.has_specialized else ("generic",)
        return [p for n, p in self.named_parameters() if any(self.is_trainable(self.role_of(n), ph) for ph in phases)]

    @contextmanager
    def use_adapters(self, mode: AdapterMode) -> Iterator[None]:
        """Run the decoder with G (``"generic"``), S1 + S2 (``"specialized"``) or the alpha-mix (``"mixed"``).

        Models without S run their single adapter for ``"generic"`` and ``"mixed"``; ``"specialized"`` raises. The
        adapters switch only when ``mode`` differs from the running one, and switch back on exit.
        """
        plan = adapter_plan(mode, alpha=self.config.alpha_mix)  # validates the name
        if not self.has_specialized:
            if mode == "specialized":
                raise ValueError(f"`method: {self.config.method}` has no specialized adapter")
            yield
            return
        previous = self._adapters
        if mode == previous:
            yield
            return
        self._switch_adapters(mode, plan)
        try:
            yield
        finally:
            self._switch_adapters(previous, adapter_plan(previous, alpha=self.config.alpha_mix))

    def _switch_adapters(self, mode: AdapterMode, plan: dict[str, float]) -> None:
        activate(self.decoder, plan)
        self._adapters = mode
        self._apply_phase()  # PEFT's set_adapter flips requires_grad

    # ------------------------------------------------------------------ encoding
    def encode(self, images: torch.Tensor, views: torch.Tensor | None = None) -> EncodedImages:
        """Encode images (B, 3, H, W) float, plus optional second views (B, 3, H, W) for the contrastive loss."""
        batch = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else None
        if views is not None and (not isinstance(views, torch.Tensor) or views.shape[:1] != images.shape[:1]):
            raise ValueError(f"`views` must be a (B={batch}, 3, H, W) tensor like `images`")
        feats = self.encoder(images if views is None else torch.cat([images, views]))
        b = images.shape[0]
        pooled = feats.pooled[:b]
        return EncodedImages(
            tokens=self.projector(feats.patches[:b]),
            pooled=pooled,
            state_logits=self.diagnosis_head(pooled) if self.diagnosis_head is not None else None,
            contrast_features=feats.pooled if views is not None else None,
        )

    @torch.no_grad()
    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised pooled features (B, C) float32 for the memory bank (no gradient)."""
        return nn.functional.normalize(self.encoder(images).pooled.float(), dim=1)

    # ------------------------------------------------------------------ decoding
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(ids)
        return self.state_tokens(ids, embeds) if self.state_tokens is not None else embeds

    def _prompt_ids(self, states: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
        if self.state_tokens is None:
            return text_prompt_ids(batch_size, self.bos_token_id, None, device)
        if self.diagnosis_prompt is None:
            raise RuntimeError("this model was built without a tokenizer (meta device); it cannot build prompts")
        return text_prompt_ids(batch_size, self.bos_token_id, self.diagnosis_prompt.ids(states), device)

    def _virtual(
        self, inputs: DecoderInputs, batch: int, num_beams: int = 1, *, generation: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Add PEFT prompt / prefix tuning's virtual tokens; returns (inputs_embeds, attention_mask, extra kwargs).

        PEFT's own ``PeftModelForCausalLM.generate`` cannot take ``inputs_embeds`` for prompt learning (its
        ``prepare_inputs_for_generation`` hides the argument, so transformers refuses), so the model adds the
        virtual tokens itself with PEFT's ``get_prompt`` and calls the base LM, identically in training and
        generation (tests check it equals PEFT's forward, and that generation's first token is training's argmax).

        ``generation=True`` (prefix tuning): transformers' ``generate`` reads ``inputs_embeds`` as the whole sequence,
        the cached prefix included, and drops its first cache-length positions; n placeholder rows stand in for the
        prefix so that what it drops is them, not the visual tokens (with fewer inputs than virtual tokens it would
        otherwise fail).
        """
        embeds, mask, kind = inputs.inputs_embeds, inputs.attention_mask, self.config.peft_type
        if kind not in ("prompt", "prefix"):
            return embeds, mask, {}
        n = self.config.adapter.num_virtual_tokens
        mask = torch.cat([torch.ones(batch, n, dtype=mask.dtype, device=mask.device), mask], dim=1)
        if kind == "prompt":
            prompts = self.decoder.get_prompt(batch_size=batch).to(embeds.dtype)
            return torch.cat([prompts, embeds], dim=1), mask, {}
        cache = self.decoder.get_prompt(batch_size=batch * num_beams, max_cache_len=embeds.shape[1] + n)
        if generation:
            embeds = torch.cat([embeds.new_zeros(batch, n, embeds.shape[-1]), embeds], dim=1)
            return embeds, mask, {"cache": cache}
        return embeds, mask, {"past_key_values": cache, "use_cache": True}

    def _run_decoder(self, inputs: DecoderInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, L, V) and final hidden states (B, L, d) over the layout positions."""
        batch, length = inputs.inputs_embeds.shape[:2]
        embeds, mask, extra = self._virtual(inputs, batch)
        extra.setdefault("use_cache", False)
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, **extra)
        return out.logits[:, -length:], out.hidden_states[-1][:, -length:]

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        adapter: AdapterMode = "generic",
        encoded: EncodedImages | None = None,
        negatives: torch.Tensor | None = None,
    ) -> FedMRGOutput:
        """Teacher-forced pass over a batch.

        Args:
            batch: ``images`` (B, 3, H, W) float32; ``input_ids`` / ``attention_mask`` (B, T) int64 report tokens
                (EOS included, right-padded); ``states`` (B, 14) int64 ground-truth states (needed with diagnosis
                prompts); optional ``views`` (B, 3, H, W) second augmented views (enable the contrastive loss) and
                ``groups`` (B,) int64 study index (default: every row its own study); optional ``token_weights``
                (B, T) float32 LM-loss weight per report token (``ReportCollator(finding_weight=...)``).
            adapter: ``"generic"``, ``"specialized"`` or ``"mixed"`` (see :meth:`use_adapters`).
            encoded: reuse the visual side of a previous pass on the same batch (skips the encoder).
            negatives: (K, C) memory-bank features from other sites, extra contrastive negatives.
        """
        for key in ("images", "input_ids", "attention_mask"):
            if key not in batch:
                raise DataError(f"batch is missing `{key}`; expected keys images, input_ids, attention_mask, states")
        if encoded is None:
            encoded = self.encode(batch["images"], batch.get("views"))
        states = None
        if self.state_tokens is not None:
            if "states" not in batch:
                raise DataError("batch is missing `states` (B, 14) int64, needed for the diagnosis prompts")
            states = batch["states"].to(encoded.tokens.device)
        b, device = encoded.tokens.shape[0], encoded.tokens.device
        inputs = layout_inputs(
            encoded.tokens,
            self._prompt_ids(states, b, device),
            self._embed,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            visual_position=self.config.decoder.visual_position,
        )
        with self.use_adapters(adapter):
            logits, hidden = self._run_decoder(inputs)
        cls = None
        if encoded.state_logits is not None:
            cls = diagnosis_loss(encoded.state_logits, states, self.diagnosis_head.loss_bias)
        con = None
        if self.config.uses_contrastive and encoded.contrast_features is not None:
            groups = batch.get("groups")
            groups = torch.arange(b, device=device) if groups is None else groups.to(device)
            con = client_aware_contrastive_loss(
                encoded.contrast_features,
                torch.cat([groups, groups]),
                negatives,
                temperature=self.config.losses.temperature,
            )
        label_weights = None
        if "token_weights" in batch:
            label_weights = torch.ones(inputs.labels.shape, dtype=torch.float32, device=device)
            label_weights[:, inputs.prompt_length :] = batch["token_weights"].to(device)
        return FedMRGOutput(
            lm_loss=language_model_loss(logits, inputs.labels, label_weights),
            cls_loss=cls,
            con_loss=con,
            logits=logits,
            hidden=hidden,
            labels=inputs.labels,
            encoded=encoded,
            label_weights=label_weights,
        )

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        *,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        generic_only: bool = False,
        min_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
        states: torch.Tensor | None = None,
        rerank_samples: int | None = None,
    ) -> GeneratedReports:
        """Write reports for images (B, 3, H, W) float32; the prompt states come from the diagnosis head.

        Args:
            max_new_tokens, num_beams, min_new_tokens, repetition_penalty, rerank_samples: override
                ``config.generation`` (``rerank_samples=0``: the greedy / beam report alone).
            generic_only: use G alone (a new site without S); otherwise the alpha-mix of G and S (paper 3.3.3).
            states: (B, 14) int64 prompt states to use instead of the diagnosis head's (e.g. the ground truth, an
                upper bound that tests the decoder alone); ``GeneratedReports.states`` then returns them.
        """
        g = self.config.generation
        num_beams = g.num_beams if num_beams is None else num_beams
        gen_config = GenerationConfig(
            max_new_tokens=g.max_new_tokens if max_new_tokens is None else max_new_tokens,
            min_new_tokens=g.min_new_tokens if min_new_tokens is None else min_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            repetition_penalty=g.repetition_penalty if repetition_penalty is None else repetition_penalty,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.bos_token_id,
            suppress_tokens=list(self.state_token_ids),  # prompt-only tokens never appear in a report
        )
        was_training = self.training
        self.eval()
        try:
            encoded = self.encode(images)
            probs = None
            b = encoded.tokens.shape[0]
            if encoded.state_logits is not None:
                probs = encoded.state_logits.float().softmax(-1)
                if states is None:
                    states = probs.argmax(-1)
                elif tuple(states.shape) != tuple(probs.shape[:2]):
                    raise ValueError(f"`states` must have shape {tuple(probs.shape[:2])}, got {tuple(states.shape)}")
                states = states.to(device=encoded.tokens.device, dtype=torch.long)
            elif states is not None:
                raise ValueError(f"`method: {self.config.method}` has no diagnosis prompts; `states` must be None")
            inputs = layout_inputs(
                encoded.tokens,
                self._prompt_ids(states, b, encoded.tokens.device),
                self._embed,
                visual_position=self.config.decoder.visual_position,
            )
            embeds, mask, extra = self._virtual(inputs, b, num_beams, generation=True)
            with self.use_adapters("generic" if generic_only else "mixed"):
                ids = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=gen_config, **extra)
                k = g.rerank_samples if rerank_samples is None else rerank_samples
                if k and states is None:
                    raise ValueError(f"`method: {self.config.method}` has no diagnosis prompts to rerank against; "
                                     "`rerank_samples` must be 0")  # fmt: skip
                if k:
                    ids = self._rerank(ids, embeds, mask, gen_config, states, extra, k)
        finally:
            self.train(was_training)
        reports = [r.strip() for r in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return GeneratedReports(reports=reports, token_ids=ids, states=states, state_probs=probs)

    def _rerank(
        self,
        ids: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        gen_config: GenerationConfig,
        states: torch.Tensor,
        extra: dict[str, Any],
        k: int,
    ) -> torch.Tensor:
        """Sample ``k`` more reports per study and keep, per study, the candidate that
        agrees best with ``states`` (:mod:`fedmrg.report.rerank`); ``ids`` (B, T) is the greedy / beam output and
        wins ties. Sampling draws from a forked RNG seeded with 0, so the result is reproducible and the caller's
        random stream is untouched. Returns (B, T'') ids padded with the pad id."""
        from fedmrg.report.rerank import pick_consistent

        g = self.config.generation
        sample_config = GenerationConfig(**{
            **gen_config.to_diff_dict(), "num_beams": 1, "do_sample": True, "temperature": g.rerank_temperature,
            "top_k": 0, "top_p": 1.0, "num_return_sequences": k,
        })  # fmt: skip
        devices = [ids.device] if ids.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            sampled = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=sample_config,
                                       **extra)  # fmt: skip
        b = ids.shape[0]
        rows = [ids[i] for i in range(b)]
        samples = [sampled[i * k : (i + 1) * k] for i in range(b)]  # HF orders the k samples of a study together
        candidates = [
            [r.strip() for r in self.tokenizer.batch_decode([rows[i], *samples[i]], skip_special_tokens=True)]
            for i in range(b)
        ]
        picks = pick_consistent(candidates, states)
        chosen = [rows[i] if p == 0 else samples[i][p - 1] for i, p in enumerate(picks)]
        return torch.nn.utils.rnn.pad_sequence(chosen, batch_first=True, padding_value=self.tokenizer.pad_token_id)
