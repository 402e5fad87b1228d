"""A synthetic federation made on demand, so a job runs on a machine where no data was prepared.

Every site calls :func:`ensure_synthetic_federation` with the same specification; generation is deterministic from
the seed, so each site obtains the identical federation and uses its own share of it. Sites that share a disk (the
simulator, a POC on one machine) generate it once: the folder is keyed by a hash of the specification and creation is
serialised with a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmrg.errors import DataError
from fedmrg.paths import cache_dir

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SyntheticSpec:
    """What ``fedmrg data prepare --source synthetic`` is asked for (all sites must pass the same values)."""

    num_studies: int = 240
    sites: int = 3
    unseen_sites: int = 1
    image_size: int = 128
    seed: int = 0
    partition: str = "style"
    val_fraction: float = 0.1

    def key(self) -> str:
        """Short stable hash naming the generated folder."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def ensure_synthetic_federation(spec: SyntheticSpec, root: str | Path | None = None) -> Path:
    """The dataset directory of ``spec`` under ``root`` (default ``<cache>/synthetic``), generated if absent.

    Returns:
        path of a federated dataset directory (``FederatedDataset.open``-able).
    """
    from fedmrg.cli import main as fedmrg_main

    base = Path(root) if root else cache_dir() / "synthetic"
    out = base / f"federation-{spec.key()}"
    base.mkdir(parents=True, exist_ok=True)
    with (base / f".{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another site may be generating the same folder
        if not (out / MANIFEST).is_file():
            args = ["data", "prepare", "--source", "synthetic", "--num-studies", str(spec.num_studies),
                    "--sites", str(spec.sites), "--unseen-sites", str(spec.unseen_sites), "--partition",
                    spec.partition, "--image-size", str(spec.image_size), "--seed", str(spec.seed), "--val-fraction", str(spec.val_fraction), "--out", str(out),
                    "--overwrite"]  # fmt: skip
            if fedmrg_main(args) != 0 or not (out / MANIFEST).is_file():
                raise DataError(f"could not generate the synthetic federation {spec} in {out}")
    return out
