"""Deployment helpers: the FLARE provisioning builder that makes startup kits ready for FedMRG jobs."""
