"""atmflow: federated multi-task model merging (Task Arithmetic, ATM) on Flower."""

__version__ = "0.1.0"
