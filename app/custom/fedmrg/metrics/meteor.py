"""METEOR 1.5 through pycocoevalcap's ``Meteor`` scorer, guarded for machines without (working) Java.

pycocoevalcap runs ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`` as a child process; the jar and
its English paraphrase table ship in the wheel, so it works offline (checked with OpenJDK 17: about 7 s, mostly
loading the paraphrase table). Two hazards of the upstream class are handled here rather than by patching it:

- if the child dies or never answers, ``compute_score`` blocks on ``readline`` (a watchdog kills the child after
  ``timeout_s``) or raises while holding its lock, after which its ``__del__`` would deadlock at garbage
  collection (the lock is released and the child reaped here);
- a missing ``java`` surfaces as ``FileNotFoundError`` from ``Popen`` (checked up front with ``shutil.which``).

Every failure becomes :class:`MeteorUnavailable`, whose message says why.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Mapping

from fedmrg.errors import FedMRGError


class MeteorUnavailable(FedMRGError):
    """METEOR could not be computed here (no ``java`` on PATH, the JVM failed, or it timed out)."""


def java_on_path() -> str | None:
    """Path of the ``java`` executable found on ``PATH``, or None."""
    return shutil.which("java")


def compute_meteor(
    gts: Mapping[str, list[str]], res: Mapping[str, list[str]], *, timeout_s: float = 600.0
) -> tuple[float, list[float]]:
    """Corpus METEOR and per-report scores, exactly as ``pycocoevalcap.meteor.meteor.Meteor().compute_score``.

    Args:
        gts: report id -> ``[reference]`` (normalised, space-tokenised, no newlines).
        res: report id -> ``[prediction]``, same ids as ``gts``.
        timeout_s: seconds after which the Java child is killed. Defaults to 600.

    Returns:
        ``(score, per_report_scores)``; the corpus score is METEOR's own aggregate (from summed statistics),
        not the mean of the per-report scores.

    Raises:
        MeteorUnavailable: ``java`` is not on PATH, the JVM could not start or failed, or the timeout passed.
    """
    java = java_on_path()
    if java is None:
        raise MeteorUnavailable("`java` was not found on PATH (METEOR 1.5 needs Java 8 or newer)")
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()
    except OSError as e:
        raise MeteorUnavailable(f"could not start METEOR with {java}: {e}") from e
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        scorer.meteor_p.kill()

    watchdog = threading.Timer(timeout_s, _kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        score, scores = scorer.compute_score(dict(gts), dict(res))
    except (OSError, ValueError) as e:  # BrokenPipeError when the JVM died; ValueError: float('') on EOF
        watchdog.cancel()
        stderr = _shutdown(scorer)
        if timed_out.is_set():
            raise MeteorUnavailable(f"METEOR did not finish within {timeout_s:g} s and was stopped") from e
        raise MeteorUnavailable(f"METEOR failed ({type(e).__name__}: {e}); java stderr: {stderr or '(empty)'}") from e
    watchdog.cancel()
    _shutdown(scorer)
    return float(score), [float(s) for s in scores]


def _shutdown(scorer: object) -> str:
    """Release the scorer's lock, end its child and return the tail of the child's stderr."""
    lock = scorer.lock  # type: ignore[attr-defined]
    if lock.locked():  # compute_score raised while holding it; __del__ would deadlock otherwise
        lock.release()
    proc = scorer.meteor_p  # type: ignore[attr-defined]
    with contextlib.suppress(OSError):  # BrokenPipeError flushing to a dead child
        proc.stdin.close()
    proc.kill()
    proc.wait()
    try:
        err = proc.stderr.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        err = ""
    return err[-500:]
