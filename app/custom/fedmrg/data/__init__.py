"""Data: study records, readers for real formats, cleaning, partitioning, site transforms, synthetic data."""

from fedmrg.data.records import ImageRef, StudyRecord, read_records, write_records

__all__ = ["ImageRef", "StudyRecord", "read_records", "write_records"]
