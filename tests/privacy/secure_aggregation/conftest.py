"""Shared fixtures: a simulated PKI (run-local CA + site identities), created once per session (RSA keygen is slow)."""

from __future__ import annotations

import pytest

from fedmrg.privacy.secure_aggregation.identity import simulated_ca, simulated_identity

SITES = ["site-1", "site-2", "site-3", "site-4"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, _ = simulated_ca(d)
    return ca, {s: simulated_identity(d, s) for s in SITES}
