"""Epsilon of site-level DP (:class:`~fedmrg.privacy.site_dp_filter.SiteDPFilter`) for a few noise levels and rounds.

Every number comes from Opacus's RDP accountant (through :class:`~fedmrg.privacy.accounting.PrivacyLedger`), one
sampled Gaussian mechanism per round, at the given delta. Columns:

- ``vs server``: what the filter reports. Noise is added at the site and the server sees each upload, so the sample
  rate is 1 whatever the number of sites K.
- ``SecAgg K=...``: if the server saw only the sum of K uploads (secure aggregation, equal weights, every site
  honest and adding its own noise), the sum carries noise ``sqrt(K) * sigma * C`` for a sensitivity of C, i.e. a
  noise multiplier ``sigma * sqrt(K)``. An assumption about the other sites, not something one site can enforce.
- ``2 of K=...``: against parties that see only the global model (other sites, model users), if each round samples
  2 of K sites uniformly and secretly, the sample rate is 2/K (amplification by sampling).

    .venv/bin/python scripts/dp_site_level_table.py --sigmas 0.5 1 2 4 --rounds 8 50 200 --delta 1e-5
"""

from __future__ import annotations

import argparse
import math
import warnings

from fedmrg.privacy.accounting import PrivacyLedger


def epsilon(sigma: float, rounds: int, *, q: float = 1.0, delta: float = 1e-5) -> float:
    """Epsilon at ``delta`` after ``rounds`` sampled Gaussian steps (noise multiplier ``sigma``, sample rate ``q``)."""
    ledger = PrivacyLedger("rdp", delta=delta)
    ledger.accountant.history = [(sigma, q, rounds)]
    return ledger.epsilon()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    p.add_argument("--rounds", type=int, nargs="+", default=[8, 50, 200])
    p.add_argument("--sites", type=int, nargs="+", default=[3, 10], help="K for the SecAgg and sampling columns")
    p.add_argument("--delta", type=float, default=1e-5)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="Optimal order is the")  # Opacus: best alpha at the range's edge

    header = ["sigma", "rounds", "vs server (q=1)"]
    header += [f"SecAgg K={k}" for k in args.sites] + [f"2 of K={k}, q={2 / k:.2g}" for k in args.sites]
    print(f"epsilon at delta = {args.delta:g} (Opacus RDP accountant, one sampled Gaussian step per round)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for sigma in args.sigmas:
        for rounds in args.rounds:
            row = [f"{sigma:g}", str(rounds), f"{epsilon(sigma, rounds, delta=args.delta):.3g}"]
            row += [f"{epsilon(sigma * math.sqrt(k), rounds, delta=args.delta):.3g}" for k in args.sites]
            row += [f"{epsilon(sigma, rounds, q=min(1.0, 2 / k), delta=args.delta):.3g}" for k in args.sites]
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
