"""Cost of secure aggregation per round, measured in one run: time (client masking, server unmasking, key exchange)
divided by one local training round of the default demo (jobs/fedmrg's learner), for the demo's shared-state size and
for a 50M-parameter shared state; and bytes on the wire with and without it.

    .venv/bin/python scripts/bench_secure_aggregation.py [--sites 3] [--local-steps 18] [--train-seconds S]
        [--shared-params N]   # with --train-seconds: skip building the demo model (sizes from a demo run summary)

The demo learner is built and trained for one round on its synthetic data (this sets the shared-state size, the delta
norm and the training time; ``--train-seconds`` skips the training and uses the given time). The protocol runs in
this process for ``--sites`` sites with the simulated identities; "client" is one site's masking of its delta (clip,
encode, self mask, n-1 pairwise masks), "server" is the removal of n self masks and decoding, "server, 1 dropout" adds
the dropped site's n-1 pairwise masks. Bytes are ``len(fobs.dumps(shareable))`` of the train upload and of every
secure-aggregation message of one site in one round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from nvflare.apis.dxo import DXO, DataKind, MetaKey  # noqa: E402
from nvflare.apis.shareable import Shareable  # noqa: E402

from fedmrg.fl.wire_bytes_meter import serialized_size  # noqa: E402
from fedmrg.paths import REPO_ROOT  # noqa: E402
from fedmrg.privacy.secure_aggregation import crypto, fixed_point  # noqa: E402
from fedmrg.privacy.secure_aggregation.constants import SecAggKey  # noqa: E402
from fedmrg.privacy.secure_aggregation.identity import simulated_ca, simulated_identity  # noqa: E402
from fedmrg.privacy.secure_aggregation.protocol import ClientRound, Params, reconstruct, remove_masks  # noqa: E402


def demo_round(
    local_steps: int, train_seconds: float | None, shared_params: int | None, work: Path
) -> tuple[dict[str, np.ndarray], float]:
    """One local round of the demo learner: its shared delta and the training seconds."""
    if shared_params is not None:  # no model build: a random delta of that size
        if train_seconds is None:
            raise SystemExit("--shared-params needs --train-seconds")
        return {"shared": np.random.default_rng(0).normal(0, 1e-3, shared_params).astype(np.float32)}, train_seconds
    from fedmrg.data.synthetic_federation import SyntheticSpec, ensure_synthetic_federation
    from fedmrg.fl.site_config import SiteConfig
    from fedmrg.report.fl_job_learner import JobFedMRGLearner

    client = json.loads((Path(REPO_ROOT) / "jobs/fedmrg/app/config/config_fed_client.json").read_text())
    args = client["executors"][0]["executor"]["args"]["learner_args"] | {"local_steps": local_steps}
    server = JobFedMRGLearner(config=args["config"], overrides=args.get("overrides"))
    init = server.initial_shared_state()
    if train_seconds is not None:
        rng = np.random.default_rng(0)
        return {k: rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in init.items()}, train_seconds
    data_root = str(ensure_synthetic_federation(SyntheticSpec(**args["synthetic"])))
    learner = JobFedMRGLearner(**(args | {"torch_threads": 1}))
    learner.setup("site-1", str(work), SiteConfig(site="site-1", data_root=data_root))
    t0 = time.perf_counter()
    out = learner.train(init, round_num=0, extra={})
    seconds = time.perf_counter() - t0
    return {k: out.shared_state[k] - init[k] for k in init}, seconds


def measure(flat: np.ndarray, sites: int, ids, ca, params: Params) -> dict[str, float]:
    names = sorted(ids)[:sites]
    session = os.urandom(16)
    t0 = time.perf_counter()
    clients = {s: ClientRound.start(ids[s], "bench", 0, session, params) for s in names}
    ads = {s: c.advertisement for s, c in clients.items()}
    shares = {s: {} for s in names}
    for s, c in clients.items():
        for r, blob in c.share(ads, ca).items():
            shares[r][s] = blob
    keyx = (time.perf_counter() - t0) / sites  # per site
    rng = np.random.default_rng(1)
    uploads = {}
    t0 = time.perf_counter()
    uploads[names[0]], _ = clients[names[0]].mask(flat, 100)
    client = time.perf_counter() - t0
    for s in names[1:]:
        uploads[s], _ = clients[s].mask(flat * rng.uniform(0.5, 1.5), 100)
    salt = crypto.round_salt("bench", 0, session)
    t = params.threshold_for(sites)
    f = clients[names[0]].fraction_bits()

    def server(survivors: list[str]) -> float:
        dropped = [s for s in names if s not in survivors]
        fresh = {s: ClientRound.load(p) for s, p in saved.items()}  # unmask answers once per round
        t0 = time.perf_counter()
        total = np.zeros(flat.size, np.uint32)
        for s in survivors:
            total += uploads[s]
        ss, ks = {}, {}
        for s in survivors:
            ss[s], ks[s] = fresh[s].unmask(survivors, dropped, shares[s])
        seeds, keys = reconstruct(ads, survivors, dropped, ss, ks, t, salt)
        fixed_point.decode(remove_masks(total, ads, seeds, keys, salt), f, 100 * len(survivors))
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        saved = {s: Path(tmp) / f"{s}.json" for s in names}
        for s, c in clients.items():
            c.save(saved[s])
        full, drop = server(names), server(names[:-1])

    # bytes of one site's messages in one round
    one = names[0]
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 100}
    plain_up = serialized_size(DXO(DataKind.WEIGHT_DIFF, {"shared": flat.astype(np.float32)}, meta).to_shareable())
    masked_meta = meta | {SecAggKey.MASKED: {"round": 0, "session": session, "weight": 100, "fraction_bits": f}}
    masked_up = serialized_size(DXO(DataKind.WEIGHT_DIFF, {"shared": uploads[one]}, masked_meta).to_shareable())

    def msg(**kv) -> int:
        s = Shareable()
        for k, v in kv.items():
            s[k] = v
        return serialized_size(s)

    stage = (
        msg(r=0, s=session, p=params.__dict__)  # advertise down
        + msg(a=ads[one].to_dict())  # advertise up
        + msg(r=0, s=session, a={k: a.to_dict() for k, a in ads.items()})  # share down
        + msg(sh={r: b"x" * 144 for r in names if r != one})  # share up (ciphertexts: 132 B + nonce + tag)
        + msg(sv=names, d=[], sh={r: shares[r] for r in names})  # unmask down
        + msg(b={s: bytes(66) for s in names}, k={})  # unmask up
    )
    return {"keyx": keyx, "client": client, "server": full, "server_drop": drop, "plain_up": plain_up,
            "masked_up": masked_up, "stage_bytes": stage, "fraction_bits": f}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=18, help="local steps of the demo round (jobs/fedmrg: 18)")
    p.add_argument("--train-seconds", type=float, default=None, help="skip training; use this many seconds")
    p.add_argument("--shared-params", type=int, default=None, help="skip building the demo model; use this size")
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--max-weight", type=int, default=1000)
    p.add_argument("--big", type=int, default=50_000_000, help="size of the large shared state (parameters)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        delta, train_s = demo_round(a.local_steps, a.train_seconds, a.shared_params, tmp / "site")
        ca, _ = simulated_ca(tmp / "pki")
        ids = {f"site-{i}": simulated_identity(tmp / "pki", f"site-{i}") for i in range(1, a.sites + 1)}
        flat = np.concatenate([delta[k].ravel() for k in sorted(delta)]).astype(np.float64)
        norm = float(np.linalg.norm(flat))
        params = Params(clip_norm=a.clip_norm, max_weight=a.max_weight)
        demo = measure(flat, a.sites, ids, ca, params)
        big_flat = np.random.default_rng(0).normal(0, 1e-4, a.big)
        big = measure(big_flat, a.sites, ids, ca, params)
    measured = "measured" if a.train_seconds is None else "given"
    print(f"{a.sites} sites; demo local round ({a.local_steps} steps): {train_s:.2f} s ({measured}); demo shared "
          f"state {flat.size:,} parameters, delta L2 norm {norm:.4g}{' (random delta)' if a.shared_params else ''} "
          f"(clip_norm {a.clip_norm})")  # fmt: skip
    for name, m, n in (("demo", demo, flat.size), (f"{a.big / 1e6:g}M", big, a.big)):
        print(f"[{name}: {n:,} params, {m['fraction_bits']} fraction bits, error bound "
              f"{fixed_point.error_bound(m['fraction_bits']):.2g}]")  # fmt: skip
        print(f"  key exchange per site {m['keyx']:.3f} s | client masking {m['client']:.3f} s | server unmasking "
              f"{m['server']:.3f} s ({m['server_drop']:.3f} s with 1 dropout)")  # fmt: skip
        print(f"  / demo local training round: client {(m['keyx'] + m['client']) / train_s:.4f} | server "
              f"{m['server'] / train_s:.4f} ({m['server_drop'] / train_s:.4f} with 1 dropout)")  # fmt: skip
        total = m["masked_up"] + m["stage_bytes"]
        print(f"  bytes per site per round: train upload {m['plain_up']:,} plain -> {m['masked_up']:,} masked, "
              f"+ {m['stage_bytes']:,} of key exchange/unmask messages; ratio {total / m['plain_up']:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
