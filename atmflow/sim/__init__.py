"""Simulation launchers: the in-process grid (tests, studies, benchmarks), the ``flwr run`` simulation driver
(Ray backend, one virtual SuperNode per task) and a local Ray cluster for multi-machine simulations."""
