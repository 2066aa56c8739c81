"""Privacy-restricted multitask training (docs/privacy.md); ``privacy`` in the run config: ``none`` |
``secagg`` | ``dp`` | ``secagg+dp``.

- :mod:`atmflow.privacy.scope`: which runs a privacy mode allows (light: read by the config's validation);
- :mod:`atmflow.privacy.secagg`: secure aggregation with Flower's SecAgg+: the server learns only the sum of
  a round's task vectors;
- :mod:`atmflow.privacy.budget`: example-level differential privacy (DP-SGD with Opacus): the budget, the
  noise calibrated to it, and the epsilon each client has spent.
"""
