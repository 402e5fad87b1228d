"""The suite's run order (tests/conftest.py): modules with more ``slow`` tests first, each module kept whole."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

spec = importlib.util.spec_from_file_location("root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
root_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(root_conftest)


@dataclass
class Item:
    """What :func:`slow_modules_first` reads of a ``pytest.Item``."""

    nodeid: str
    slow: bool = False

    def get_closest_marker(self, name: str):
        return object() if name == "slow" and self.slow else None


def test_modules_with_more_slow_tests_come_first_and_stay_whole():
    items = [
        Item("a.py::t1"),
        Item("b.py::t1", slow=True),
        Item("a.py::t2"),  # a module's tests are grouped even when collected apart
        Item("c.py::t1", slow=True),
        Item("c.py::t2[x::y]", slow=True),  # a parameter holding '::' stays in its module
        Item("d.py::T::t1", slow=True),
    ]
    order = [i.nodeid for i in root_conftest.slow_modules_first(items)]
    assert order == ["c.py::t1", "c.py::t2[x::y]", "b.py::t1", "d.py::T::t1", "a.py::t1", "a.py::t2"]


def test_the_suite_starts_with_slow_modules_and_ends_with_quick_ones(request):
    """In this very session: once a module without slow tests has run, no module with slow tests follows."""
    modules = list(dict.fromkeys(item.nodeid.split("::", 1)[0] for item in request.session.items))
    has_slow = {m: False for m in modules}
    for item in request.session.items:
        has_slow[item.nodeid.split("::", 1)[0]] |= item.get_closest_marker("slow") is not None
    flags = [has_slow[m] for m in modules]
    assert flags == sorted(flags, reverse=True), [m for m in modules if has_slow[m]]
