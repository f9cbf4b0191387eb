"""Server halves of the algorithms (Flower strategies) and the ServerApp."""

from . import fedavg  # noqa: F401  (registers fedavg, local_sgd)
