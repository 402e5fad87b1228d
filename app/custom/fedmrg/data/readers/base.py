"""What every reader returns: the records it built and the items it skipped, each with a reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedmrg.data.records import StudyRecord


@dataclass(frozen=True)
class Skip:
    """One input item a reader did not turn into a record.

    Args:
        item: what was skipped (study id, file path or CSV row), as the user would find it.
        reason: why, in words ("empty findings and impression", "image not found: ...").
    """

    item: str
    reason: str


@dataclass
class ReadResult:
    """Records read from a source plus every skip, so nothing is dropped silently."""

    records: list[StudyRecord] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def skip_summary(self) -> dict[str, int]:
        """Count of skips per reason (reasons truncated at the first ':' so similar ones group)."""
        out: dict[str, int] = {}
        for s in self.skipped:
            key = s.reason.split(":", 1)[0]
            out[key] = out.get(key, 0) + 1
        return out
