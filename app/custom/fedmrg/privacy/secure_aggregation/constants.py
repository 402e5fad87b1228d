"""Task names, Shareable keys and the error type of secure aggregation, declared once.

Keys are plain strings: FOBS serialises Shareables and DXO meta with strict msgpack types.
"""

from __future__ import annotations

from fedmrg.errors import FedMRGError


class SecAggTask:
    """The extra per-round tasks sent by :class:`.secure_scatter_and_gather.SecureScatterAndGather`."""

    #: server -> site: round, session, parameters; site -> server: its signed advertisement
    ADVERTISE = "secagg_advertise"
    #: server -> site: every participant's advertisement; site -> server: its encrypted Shamir shares, by recipient
    SHARE = "secagg_share"
    #: server -> survivors: survivors, dropped sites and the shares addressed to each; site -> server: decrypted shares
    UNMASK = "secagg_unmask"

    ALL = (ADVERTISE, SHARE, UNMASK)


class SecAggKey:
    """Keys of the stage Shareables (plain dict entries) and of the masked train result's DXO meta."""

    ROUND = "fedmrg.secagg.round"
    SESSION = "fedmrg.secagg.session"  # 16 random bytes drawn by the server per round
    PARAMS = "fedmrg.secagg.params"  # {"clip_norm", "max_weight", "threshold", "min_sites"}
    ADVERT = "fedmrg.secagg.advertisement"
    ADVERTS = "fedmrg.secagg.advertisements"  # {site: advertisement dict}
    SHARES = "fedmrg.secagg.shares"  # {recipient: ciphertext} up; {recipient: {sender: ciphertext}} down
    SURVIVORS = "fedmrg.secagg.survivors"
    DROPPED = "fedmrg.secagg.dropped"
    SELF_MASK_SHARES = "fedmrg.secagg.self_mask_shares"  # {site: share bytes} of survivors' self-mask seeds
    KEY_SHARES = "fedmrg.secagg.key_shares"  # {site: share bytes} of dropped sites' mask private keys
    ERROR = "fedmrg.secagg.error"  # a site's reason for refusing a stage (str)
    #: train result DXO meta: {"round", "session", "weight", "fraction_bits"} of the masked upload
    MASKED = "fedmrg.secagg.masked"


class SecureAggregationError(FedMRGError):
    """The protocol cannot continue safely (forged key, too many dropouts, inconsistent shares, ...).

    The message names the site involved. Components fail closed on it: the site refuses the stage, or the server
    aborts the run without producing a model.
    """
