"""Helpers for the FL component tests: a minimal engine (workspace, components, local events) and contexts."""

from __future__ import annotations

from pathlib import Path

import pytest
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace

JOB_ID = "job1"


class FakeEngine:
    """What our components use of a FLARE engine: a workspace, components by id, local event dispatch."""

    def __init__(self, root: Path, site: str, components: dict | None = None) -> None:
        for sub in ("startup", "local"):  # FLARE's Workspace requires both
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace(str(root), site_name=site)
        self.components = dict(components or {})
        self.events: list[str] = []

    def get_workspace(self) -> Workspace:
        return self.workspace

    def get_component(self, cid: str):
        return self.components.get(cid)

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        self.events.append(event_type)
        for c in self.components.values():
            c.handle_event(event_type, fl_ctx)


def make_ctx(engine: FakeEngine | None = None, *, identity: str = "", peer: str = "") -> FLContext:
    ctx = FLContext()
    if engine is not None:
        ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, JOB_ID, private=True, sticky=False)
    if identity:
        ctx.set_prop(ReservedKey.IDENTITY_NAME, identity, private=False, sticky=False)
    if peer:
        peer_ctx = FLContext()
        peer_ctx.set_prop(ReservedKey.IDENTITY_NAME, peer, private=False, sticky=False)
        ctx.set_peer_context(peer_ctx)
    return ctx


class Flare:
    """The helpers above, handed to tests by the ``flare`` fixture."""

    job_id = JOB_ID
    engine = FakeEngine
    ctx = staticmethod(make_ctx)


@pytest.fixture()
def flare() -> type[Flare]:
    return Flare


@pytest.fixture()
def toy_args() -> dict:
    """Small, fast ToyLearner arguments."""
    return {"in_features": 4, "hidden": 6, "num_train": 16, "num_val": 8, "local_steps": 5, "bank_size": 3, "seed": 1}
