"""Global memory bank of pooled image features, grouped by site (paper 3.2.1).

Each round a site samples a few of its L2-normalised pooled features and uploads them; the server merges the
uploads (:meth:`MemoryBank.add` per site, a site's new upload replacing its old one) and sends the bank back; a site
draws extra contrastive negatives with :meth:`MemoryBank.sample` which never returns that site's own features.

Privacy: bank features are derived from patients' images and leave the site. They are counted in the privacy
design (upload size ``memory_bank.upload_per_round``; 0 disables the upload).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class MemoryBank:
    """Features of dimension ``dim`` from several sites, at most ``per_site_capacity`` per site.

    Args:
        dim: feature width C.
        per_site_capacity: features kept per site; when a site adds more, its most recent ones are kept.
    """

    def __init__(self, dim: int, *, per_site_capacity: int = 256) -> None:
        if dim <= 0:
            raise ValueError(f"`dim` must be > 0, got {dim}")
        if per_site_capacity <= 0:
            raise ValueError(f"`per_site_capacity` must be > 0, got {per_site_capacity}")
        self.dim = dim
        self.per_site_capacity = per_site_capacity
        self._features: dict[str, torch.Tensor] = {}

    @property
    def sites(self) -> list[str]:
        """Sites that have features in the bank, sorted."""
        return sorted(self._features)

    def __len__(self) -> int:
        return sum(f.shape[0] for f in self._features.values())

    def add(self, features: torch.Tensor, site: str, *, replace: bool = True) -> None:
        """Store ``features`` (n, dim) from ``site`` (L2-normalised, detached, float32 on CPU).

        With ``replace`` (the default; one upload per round) the site's previous features are dropped; otherwise the
        new ones are appended. Either way only the newest ``per_site_capacity`` are kept.
        """
        if not site:
            raise ValueError("`site` must be a non-empty site name")
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"`features` must have shape (n, {self.dim}), got {tuple(features.shape)}")
        new = F.normalize(features.detach().float().cpu(), dim=1)
        if not replace and site in self._features:
            new = torch.cat([self._features[site], new])
        self._features[site] = new[-self.per_site_capacity :].clone()

    def sample(self, k: int, *, exclude_site: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """Up to ``k`` features drawn uniformly without replacement from every site except ``exclude_site``.

        Returns a (k', dim) float32 tensor, k' = min(k, features of other sites) (may be 0).
        """
        others = [self._features[s] for s in self.sites if s != exclude_site]
        pool = torch.cat(others) if others else torch.empty(0, self.dim)
        if k <= 0 or pool.shape[0] == 0:
            return torch.empty(0, self.dim)
        idx = torch.randperm(pool.shape[0], generator=generator)[:k]
        return pool[idx]

    def merge(self, other: MemoryBank) -> None:
        """Take every site's features from ``other`` (replacing this bank's features of those sites)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge a bank of dim {other.dim} into one of dim {self.dim}")
        for site in other.sites:
            self.add(other._features[site], site)

    def state_dict(self) -> dict[str, Any]:
        """Transportable state: ``features`` (n, dim) float32, ``site_index`` (n,) int64, ``sites`` list[str]."""
        sites = self.sites
        feats = [self._features[s] for s in sites]
        index = [torch.full((f.shape[0],), i, dtype=torch.long) for i, f in enumerate(feats)]
        return {
            "features": torch.cat(feats) if feats else torch.empty(0, self.dim),
            "site_index": torch.cat(index) if index else torch.empty(0, dtype=torch.long),
            "sites": sites,
            "dim": self.dim,
            "per_site_capacity": self.per_site_capacity,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the bank's content with ``state`` from :meth:`state_dict`; checks keys and shapes."""
        expected = {"features", "site_index", "sites", "dim", "per_site_capacity"}
        if set(state) != expected:
            raise ValueError(f"memory bank state must have keys {sorted(expected)}, got {sorted(state)}")
        if int(state["dim"]) != self.dim:
            raise ValueError(f"memory bank state has dim {state['dim']}, this bank {self.dim}")
        features = torch.as_tensor(state["features"], dtype=torch.float32)
        index = torch.as_tensor(state["site_index"], dtype=torch.long)
        if features.ndim != 2 or features.shape[1] != self.dim or index.shape != features.shape[:1]:
            raise ValueError(
                f"memory bank state: `features` must be (n, {self.dim}) and `site_index` (n,), got "
                f"{tuple(features.shape)} and {tuple(index.shape)}"
            )
        sites = list(state["sites"])
        if index.numel() and (index.min() < 0 or index.max() >= len(sites)):
            raise ValueError(f"memory bank state: `site_index` out of range for {len(sites)} sites")
        self._features = {}
        for i, site in enumerate(sites):
            rows = features[index == i]
            if rows.shape[0]:
                self.add(rows, site)
