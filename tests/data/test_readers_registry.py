"""read_source: the registry, option checking and wrong paths, for every source."""

from __future__ import annotations

import pytest

from fedmrg.data.readers import SOURCES, read_source
from fedmrg.errors import DataError


def test_sources_are_the_contract_names():
    assert set(SOURCES) == {"iu-kaggle", "annotation-json", "mimic-cxr", "chexpert-plus", "dicom-dir"}


def test_unknown_source_lists_valid_ones(tmp_path):
    with pytest.raises(DataError) as e:
        read_source("padchest", tmp_path)
    for name in SOURCES:
        assert name in str(e.value)
    assert "padchest" in str(e.value)


@pytest.mark.parametrize("name", SOURCES)
def test_wrong_path_names_it(tmp_path, name):
    missing = tmp_path / "no-such-thing"
    with pytest.raises(DataError, match="no-such-thing"):
        read_source(name, missing)


@pytest.mark.parametrize("name", SOURCES)
def test_unknown_option_is_refused(tmp_path, name):
    with pytest.raises(DataError, match=r"unknown option\(s\) \['image_dirr'\]"):
        read_source(name, tmp_path, image_dirr=tmp_path)


@pytest.mark.parametrize("name", ["iu-kaggle", "annotation-json", "mimic-cxr", "chexpert-plus"])
def test_bad_missing_images_value(tmp_path, name):
    with pytest.raises(DataError, match="`missing_images` must be one of"):
        read_source(name, tmp_path, missing_images="render")
