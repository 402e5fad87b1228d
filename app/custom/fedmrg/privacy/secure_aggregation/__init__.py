"""Optional secure aggregation (pairwise masks, Bonawitz et al. 2017, with signed keys): the server learns only the
weighted sum of the sites' clipped shared deltas, even when some sites drop out after the key exchange.

Pure protocol: :mod:`.crypto` (X25519, HKDF, ChaCha20 masks, ChaCha20-Poly1305), :mod:`.fixed_point`, :mod:`.shamir`,
:mod:`.identity` (signatures with the provisioned or simulated site identity), :mod:`.protocol`.

FLARE components: server :class:`.secure_scatter_and_gather.SecureScatterAndGather` (workflow) and
:class:`.secure_aggregator.SecureAggregator`; client :class:`.secagg_executor.SecureAggregationExecutor` and
:class:`.mask_filter.SecureAggregationMaskFilter` (``train`` result filter). :mod:`.job_variant` switches a job on.
"""
