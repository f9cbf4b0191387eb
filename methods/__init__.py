"""The method units: each module is one method (or one family) a researcher reads in one
sitting, registered in fedsim.method.METHODS."""

from . import fedavg, fedprox, proxskip, scaffold, scaled_sgd, signsgd, split_lora  # noqa: F401
