"""Optional privacy and security layers on what leaves a site: differential privacy and secure aggregation.

Every layer is off by default and switched on in the job configuration; see the README's "Privacy and security".
"""
