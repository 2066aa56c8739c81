"""atmflow: federated multi-task model merging (Task Arithmetic, TIES, Breadcrumbs, DARE, TATR, ATM) on Flower.

The rooms, bottom to top (a module imports only from rooms below its own):

- ``config``, ``app_config``, ``protocol``, ``transport``, ``files``, ``paths``: the validated run config,
  the wire format (every message and metric key), the task-vector encoding, atomic files.
- ``merging/``: merge rules as pure tensor functions, one module each in ``merging/rules/``, found by
  ``merging/registry``; ``models/`` and ``data/``: the pretrained encoders, frozen heads and task data.
- ``client/``: the Flower ClientApp (one task per node); it knows nothing of how it is merged.
- ``rounds/``: one exchange with the task nodes, its records and the task-vector geometry.
- ``strategies/``: thin Flower strategies around the rules, driven by a ``RunPlan``.
- ``server/``: the ServerApp: handshake, the run, checkpoints, results and report.
- ``sim/`` (in-process grid, ``flwr run`` simulation, Ray cluster) and ``deploy/`` (loopback deployment):
  the launchers; ``analyses/`` and ``studies/``: task-arithmetic analyses, the papers' studies and the
  benchmarks; ``cli``: the ``atmflow`` command.
"""

__version__ = "0.1.0"
