"""Client halves of the algorithms and the ClientApp that runs them."""

from . import local_sgd  # noqa: F401  (registers fedavg, local_sgd)
