"""Server halves of the algorithms (Flower strategies) and the ServerApp."""

from . import fedavg, proxskip, scaled_sgd, signsgd  # noqa: F401  (register their methods)
