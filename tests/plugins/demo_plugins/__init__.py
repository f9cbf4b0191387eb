"""A plug-in package: a model with options of its own and BatchNorm, a dataset from arrays,
and two methods, FedAvgM and FedAdam (docs/extending.md walks through each file)."""

from . import datasets, methods, models  # noqa: F401  (importing registers them)
