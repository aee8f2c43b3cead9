"""Search spaces over compression policies (presets and per-layer dimensions).

The search itself lands with the Optuna search driver; today the package holds nothing,
and policies are written by hand (see policies.Policy).
"""
