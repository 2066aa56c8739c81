"""Privacy of a run: example-level differential privacy (DP-SGD, :mod:`atmflow.privacy.budget`).

``privacy`` in the run config: ``none`` | ``dp`` (``secagg`` and ``secagg+dp`` name secure aggregation,
which this build does not contain). docs/privacy.md says what the guarantee covers and what it does not.
"""
