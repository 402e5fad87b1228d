"""Privacy accounting on top of Opacus accountants: a checkpointable ledger, projections and the budget rule.

The mathematics is Opacus's (``opacus.accountants``: RDP, Mironov 2017 / Mironov et al. 2019; PRV, Gopi et al.
2021); this module only keeps the state on disk and answers "what would epsilon be after n more steps". The whole
privacy state is Opacus's history ``[(noise_multiplier, sample_rate, steps), ...]``, saved as JSON next to the
site's private state so that it survives rounds, client restarts and, with a ``private_dir`` outside the run,
resumed runs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

from opacus.accountants import IAccountant, create_accountant

from fedmrg.errors import DataError
from fedmrg.privacy.errors import PrivacyBudgetExhausted

__all__ = ["LEDGER_VERSION", "PrivacyBudgetExhausted", "PrivacyLedger"]

LEDGER_VERSION = 1


class PrivacyLedger:
    """An Opacus accountant plus the delta at which epsilon is reported; ``state_dict`` / ``load_state_dict``.

    Args:
        accountant: ``"rdp"`` or ``"prv"`` (Opacus ``create_accountant``).
        delta: the delta of every reported epsilon.
    """

    def __init__(self, accountant: str = "rdp", *, delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"`delta` must be in (0, 1), got {delta}")
        self.kind = accountant
        self.delta = delta
        self.accountant: IAccountant = create_accountant(accountant)

    @property
    def steps(self) -> int:
        """Noisy steps recorded so far."""
        return int(sum(s for _, _, s in self.accountant.history))

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` sampled Gaussian mechanisms (Opacus merges identical consecutive entries)."""
        for _ in range(steps):
            self.accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before the first step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon at ``delta`` if ``steps`` more steps were taken (the ledger is not changed)."""
        probe = PrivacyLedger(self.kind, delta=self.delta)
        probe.accountant.history = copy.deepcopy(self.accountant.history)
        probe.accountant.history.append((noise_multiplier, sample_rate, steps))
        return probe.epsilon()

    def check_budget(
        self, max_epsilon: float | None, *, noise_multiplier: float, sample_rate: float, steps: int, who: str
    ) -> float:
        """The projected epsilon after ``steps`` more steps; PrivacyBudgetExhausted when it exceeds ``max_epsilon``."""
        projected = self.epsilon_after(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        if max_epsilon is not None and projected > max_epsilon:
            raise PrivacyBudgetExhausted(
                f"{who}: privacy budget exhausted: epsilon spent {self.epsilon():.3f}, the next round would reach "
                f"{projected:.3f} > max_epsilon {max_epsilon:g} (delta {self.delta:g}); this site no longer trains "
                "in this run (raise the budget only with the data owner's consent)"
            )
        return projected

    # -- persistence --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: version, delta and the Opacus accountant state (its ``mechanism`` is checked on load)."""
        state = self.accountant.state_dict()
        return {
            "version": LEDGER_VERSION,
            "delta": self.delta,
            "mechanism": state["mechanism"],
            "history": [list(h) for h in state["history"]],
        }

    def load_state_dict(self, state: dict[str, Any], *, what: str = "ledger") -> None:
        """Restore :meth:`state_dict`; DataError when the kind or delta differs (never silently restart at 0)."""
        if state.get("version") != LEDGER_VERSION:
            raise DataError(f"{what}: unsupported ledger version {state.get('version')!r}")
        if state.get("mechanism") != self.accountant.mechanism():
            raise DataError(f"{what}: saved by a {state.get('mechanism')!r} accountant, this one is {self.kind!r}")
        if not math.isclose(float(state.get("delta", -1)), self.delta):
            raise DataError(f"{what}: saved at delta {state.get('delta')}, configured delta is {self.delta}")
        history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.accountant.load_state_dict({"history": history, "mechanism": state["mechanism"]})

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps(self.state_dict(), indent=2), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load(self, path: str | Path) -> bool:
        """Restore from ``path``; False (ledger unchanged) when the file does not exist, DataError when unreadable."""
        path = Path(path)
        if not path.is_file():
            return False
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: unreadable privacy ledger: {e}") from e
        self.load_state_dict(state, what=str(path))
        return True
