"""Server halves of the algorithms (Flower strategies) and the ServerApp."""

from . import fedavg, proxskip  # noqa: F401  (register their methods)
