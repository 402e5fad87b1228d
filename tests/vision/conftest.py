"""Fixtures of the vision tests: small random ViT / SAM backbones saved with ``save_pretrained`` (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmrg.vision.backbones import tiny_sam, tiny_vit


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"vit": dir, "sam": dir}``: a 2-layer 32-wide ViT and a SAM (windowed + global attention), 32 px input."""
    root = tmp_path_factory.mktemp("backbones")
    tiny_vit().save_pretrained(str(root / "vit"))
    tiny_sam().save_pretrained(str(root / "sam"))
    return {"vit": root / "vit", "sam": root / "sam"}
