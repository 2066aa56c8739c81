"""The merge rules, one module each. :mod:`atmflow.merging.registry` imports every module of this package:
a new rule is a new module here (a :class:`~atmflow.merging.rule.Rule` subclass with a ``name``) and
its test; the run config, ATM, the ``atmflow merge`` command and the benchmarks pick it up."""
