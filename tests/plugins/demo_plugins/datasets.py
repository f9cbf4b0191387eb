"""A dataset from arrays: scikit-learn's wine data, with a natural split by cultivar region."""

import numpy as np
from pydantic import BaseModel, Field
from sklearn.datasets import load_wine

import fedsim


class WineOptions(BaseModel):
    """The `data.options` of `wine`."""

    standardize: bool = Field(True, description="scale features by the training split's")
    regions: int = Field(4, ge=1, description="client ids for a natural split")


@fedsim.register_dataset("wine", options=WineOptions)
def wine(options: WineOptions, seed: int) -> fedsim.ArrayData:
    """scikit-learn's wine: 178 examples, 13 features, 3 classes."""
    x, y = load_wine(return_X_y=True)
    regions = np.random.default_rng(0).integers(0, options.regions, len(y))
    return fedsim.ArrayData(x, y, clients=regions)
