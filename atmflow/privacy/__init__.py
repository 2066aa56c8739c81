"""Privacy-restricted multitask training (docs/privacy.md).

- :mod:`atmflow.privacy.scope`: which runs a privacy mode allows (light: read by the config's validation);
- :mod:`atmflow.privacy.secagg`: secure aggregation with Flower's SecAgg+: the server learns only the sum of
  a round's task vectors.
"""
