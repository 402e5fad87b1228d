"""FedMRG: federated radiology report generation on NVIDIA FLARE."""

__version__ = "0.1.0"
