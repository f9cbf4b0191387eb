"""The `[data]` table of a scenario: which dataset, how many clients, how to split it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from fedsim.data.base import DATASETS


def parse_options(dataset: str, options: dict[str, Any], num_clients: int) -> BaseModel:
    """Validate `options` with the dataset's own model (`num_clients` is passed as context)."""
    model = DATASETS.get(dataset).options
    try:
        return model.model_validate(options, context={"num_clients": num_clients})
    except ValidationError as err:
        problems = "; ".join(map(_describe, err.errors()))
        allowed = sorted(model.model_fields)
        raise ValueError(
            f"bad options for dataset {dataset!r} ({problems}); allowed keys: {allowed}"
        ) from None


def _describe(error: ErrorDetails) -> str:
    """`key=value: message` for one pydantic error (no value for a missing key)."""
    key = ".".join(map(str, error["loc"])) or "options"
    if error["type"] == "missing":
        return f"{key}: {error['msg']}"
    return f"{key}={error['input']!r}: {error['msg']}"


class DataConfig(BaseModel):
    """Dataset choice, client count and partitioning of one scenario."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: Annotated[str, AfterValidator(DATASETS.check)] = Field(
        "digits", description="a registered dataset (its options: `options`)"
    )
    num_clients: int = Field(20, ge=1, description="clients (partitions) in the population")
    partitioner: Literal["iid", "dirichlet", "shards", "natural"] = Field(
        "iid",
        validate_default=True,
        description="how training examples go to clients: seeded iid blocks, Dirichlet label"
        " skew (alpha), label-sorted shards (shards_per_client), or the dataset's own client ids",
    )
    alpha: float = Field(
        0.5, gt=0, description="dirichlet: how each label is spread over clients (smaller: skewed)"
    )
    shards_per_client: int = Field(2, ge=1, description="shards: label-sorted shards per client")
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="share of the examples held out for server evaluation (datasets without"
        " a test split of their own)",
    )
    l2: float = Field(0.0, ge=0, description="(l2/2)||x||^2 added to every client's loss")
    options: dict[str, Any] = Field(
        {},
        validate_default=True,
        description="the dataset's own options; those not given are filled with their defaults",
    )

    @field_validator("partitioner")
    @classmethod
    def _natural_iff_natural_dataset(cls, partitioner: str, info: ValidationInfo) -> str:
        name = info.data.get("dataset")
        if name is None:  # the dataset itself was invalid and is reported on its own
            return partitioner
        natural = DATASETS.get(name).natural
        if natural is None:  # the dataset can be split either way
            return partitioner
        if natural and partitioner != "natural":
            raise ValueError(
                f"dataset {name!r} defines its own client split: partitioner must be "
                f"'natural', not {partitioner!r}"
            )
        if not natural and partitioner == "natural":
            raise ValueError(
                f"partitioner 'natural' needs a dataset with its own client split and "
                f"{name!r} has none; use 'iid', 'dirichlet' or 'shards'"
            )
        return partitioner

    @field_validator("options")
    @classmethod
    def _dataset_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "dataset" not in info.data or "num_clients" not in info.data:
            return options
        return parse_options(info.data["dataset"], options, info.data["num_clients"]).model_dump()
