"""fedsim: federated and split learning simulation on Flower."""

__version__ = "0.1.0"
