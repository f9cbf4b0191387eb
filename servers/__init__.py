"""Server halves of the algorithms (Flower strategies) and the ServerApp."""

from . import fedavg, proxskip, scaled_sgd  # noqa: F401  (register their methods)
