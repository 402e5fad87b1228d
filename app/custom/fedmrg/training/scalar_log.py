"""TensorBoard scalars of a training run, under ``<tag prefix>/<group>/<name>``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class ScalarLog:
    """A TensorBoard ``SummaryWriter`` (created lazily on the first write; nothing when ``directory`` is None).

    Args:
        directory: the folder of the event files, or None for no logging.
        tag_prefix: prepended to every tag (e.g. the site name: ``site-1/train/g/lm``).
    """

    def __init__(self, directory: str | Path | None, *, tag_prefix: str = "") -> None:
        self.directory = None if directory is None else Path(directory)
        self.tag_prefix = f"{tag_prefix}/" if tag_prefix else ""
        self._writer = None

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def log(self, scalars: Mapping[str, float], *, step: int, group: str = "") -> None:
        """Write ``scalars`` at ``step`` under ``<tag_prefix><group><name>`` (``group`` ends with ``/``) and flush."""
        if self.directory is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.directory))
        for k, v in scalars.items():
            self._writer.add_scalar(f"{self.tag_prefix}{group}{k}", float(v), step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later :meth:`log` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
