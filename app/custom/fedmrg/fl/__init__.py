"""Federated plumbing shared by FedMRG and the visual prompt generator: FLARE components, one per module.

A model system implements :class:`fedmrg.fl.learner.SharedStateLearner`; the job config names it by dotted path.

Client: :class:`~fedmrg.fl.shared_state_executor.SharedStateExecutor` (tasks ``train``, ``validate``,
``submit_model``).

Server: :class:`~fedmrg.fl.resumable_scatter_and_gather.ResumableScatterAndGather`,
:class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor`,
:class:`~fedmrg.fl.finite_update_aggregator.FiniteUpdateAggregator`,
:class:`~fedmrg.fl.extra_payload_relay.ExtraPayloadRelay` (task-data filter),
:class:`~fedmrg.fl.wire_bytes_meter.WireBytesMeter` (task-data and task-result filter),
:class:`~fedmrg.fl.shared_state_model_locator.SharedStateModelLocator`,
:class:`~fedmrg.fl.run_summary.RunSummary` (widget), plus FLARE's ``FullModelShareableGenerator``,
``IntimeModelSelector`` and ``CrossSiteModelEval``. ``jobs/toy`` wires them together around
:class:`~fedmrg.fl.toy_learner.ToyLearner`.
"""
