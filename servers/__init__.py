"""Server halves of the algorithms (Flower strategies) and the ServerApp."""

from . import fedavg, proxskip, scaled_sgd, signsgd, split  # noqa: F401  (register them)
