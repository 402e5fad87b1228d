"""Privacy errors, importable without torch or Opacus (the FLARE executor catches them)."""

from __future__ import annotations

from fedmrg.errors import FedMRGError


class PrivacyBudgetExhausted(FedMRGError):
    """A site refuses to train (or to release an update) because the next round would exceed its epsilon budget."""
