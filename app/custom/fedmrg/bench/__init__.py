"""The paper's comparison (FedMRG against its baselines): the benchmark federation and the runner."""
