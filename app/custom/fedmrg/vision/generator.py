"""Visual prompt generators: per-image prompts from a shared task embedding (the system) and static prompts (VPT).

:class:`PromptGenerator` is the cross-attention block of federated visual prompt generation: a globally shared,
learnable task embedding ``E`` of shape ``(K, D)`` is the query set; the image's own patch embeddings (from the
frozen backbone's patch embedding, shape ``(B, N, D_kv)``) are keys and values. One pre-norm cross-attention block
with a feed-forward layer writes ``K`` prompt tokens per image::

    q = E + Attn(LN(E), LN(P), LN(P));  prompt = Proj(q + MLP(LN(q)))      # (B, K, D_out)

The prompt depends on the image (it attends to the image's patches), so two images get two different prompts.
:class:`StaticPrompts` is the baseline: ``K`` learnable tokens, the same for every image (VPT-shallow), averaged
across sites like any other shared weight.
"""

from __future__ import annotations

import torch
from torch import nn


class PromptGenerator(nn.Module):
    """Cross-attention prompt generator.

    Args:
        num_prompts: K, prompt tokens per image.
        dim: D, width of the task embedding and of the attention.
        kv_dim: D_kv, width of the patch embeddings (keys / values). Defaults to ``dim``.
        out_dim: D_out, width of the written prompt tokens (e.g. SAM's mask-decoder width). Defaults to ``dim``.
        num_heads: attention heads (must divide ``dim``).
        mlp_ratio: hidden width of the feed-forward layer as a multiple of ``dim``.
    """

    def __init__(
        self,
        num_prompts: int,
        dim: int,
        kv_dim: int | None = None,
        out_dim: int | None = None,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"`num_prompts` must be >= 1, got {num_prompts}")
        if dim % num_heads:
            raise ValueError(f"`num_heads` ({num_heads}) must divide `dim` ({dim})")
        kv_dim = kv_dim or dim
        out_dim = out_dim or dim
        self.num_prompts, self.dim, self.kv_dim, self.out_dim = num_prompts, dim, kv_dim, out_dim
        #: the globally shared task embedding (queries), (K, D)
        self.task_embedding = nn.Parameter(torch.randn(num_prompts, dim) * 0.02)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, kdim=kv_dim, vdim=kv_dim, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.proj = nn.Identity() if out_dim == dim else nn.Linear(dim, out_dim)

    def forward(self, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """Prompts for a batch of images.

        Args:
            patch_embeddings: ``(B, N, D_kv)`` patch embeddings of each image.

        Returns:
            ``(B, K, D_out)`` prompt tokens.
        """
        if patch_embeddings.dim() != 3 or patch_embeddings.shape[-1] != self.kv_dim:
            raise ValueError(
                f"patch_embeddings must have shape (B, N, {self.kv_dim}), got {tuple(patch_embeddings.shape)}"
            )
        b = patch_embeddings.shape[0]
        q = self.task_embedding.unsqueeze(0).expand(b, -1, -1)
        kv = self.norm_kv(patch_embeddings)
        attended, _ = self.attn(self.norm_q(q), kv, kv, need_weights=False)
        q = q + attended
        q = q + self.mlp(self.norm_mlp(q))
        return self.proj(q)


class StaticPrompts(nn.Module):
    """K learnable prompt tokens, identical for every image (VPT-shallow baseline, "averaged prompts").

    Args:
        num_prompts: K.
        out_dim: width of the prompt tokens.
    """

    def __init__(self, num_prompts: int, out_dim: int) -> None:
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"`num_prompts` must be >= 1, got {num_prompts}")
        self.num_prompts, self.out_dim = num_prompts, out_dim
        self.task_embedding = nn.Parameter(torch.randn(num_prompts, out_dim) * 0.02)

    def forward(self, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, N, *)`` patch embeddings (only B is used) -> ``(B, K, D_out)`` prompts."""
        return self.task_embedding.unsqueeze(0).expand(patch_embeddings.shape[0], -1, -1)
