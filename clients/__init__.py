"""Client halves of the algorithms and the ClientApp that runs them."""

from . import local_sgd, proxskip, scaled_sgd, signsgd, split_host  # noqa: F401  (register)
