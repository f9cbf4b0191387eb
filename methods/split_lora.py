"""Label-private split learning of LoRA adapters (P3EFT and its baselines; docs/algorithms.md
section 7): the declaration. The label party's loop is `fedsim.servers.split`, the backbone
hosts' answers `fedsim.clients.split_host`; both load transformers and PEFT, which a run of
any other method never imports."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from fedsim.encoders import model_path
from fedsim.method import Method, Params, Supports, register_method

TINY = "tiny-bert"  # a small BERT initialised from the seed, with the task's own vocabulary
TEXT = ("sentences", "text_tsv")  # the datasets whose examples are word ids into a vocabulary


class SplitParams(Params):
    """One method of label-private split LoRA training and its settings."""

    method: Literal["head_only", "vanilla", "dc", "p3eft"] = Field(
        "p3eft",
        description="P3EFT, or a baseline: head_only (frozen backbone), vanilla (one adapter,"
        " plain backprop), dc (vanilla plus a distance-correlation penalty)",
    )
    backbone: str = Field(
        TINY,
        description="'tiny-bert', a local model path, a cached name, or a packaged encoder"
        " ('sentence-transformers/all-MiniLM-L6-v2' with the minilm extra)",
    )
    hosts: int = Field(
        1,
        ge=1,
        description="backbone hosts (nodes): 1 is the two-party setting; P3EFT's multi-party"
        " setting needs adapters x shards hosts, so none sees two adapter sets or two shards",
    )
    adapters: int = Field(2, ge=1, description="n adapter sets (P3EFT; the baselines use 1)")
    shards: int = Field(2, ge=1, description="m private-backprop shards (P3EFT; baselines: 1)")
    rank: int = Field(16, ge=1, description="r: the rank of every LoRA adapter")
    lora_alpha: int = Field(32, ge=1, description="LoRA's alpha: updates scaled by alpha / r")
    reg: float = Field(0.02, ge=0, description="weight of the probe (P3EFT) or DC penalty")
    batch_size: int = Field(32, ge=2, description="examples per training step")
    lr: float = Field(1e-3, gt=0, description="Adam's step size for head and adapters")
    noise_scale: float = Field(100.0, gt=0, description="RMS of a shard's noise over g_h's")
    mix_scale: float = Field(30.0, ge=0, description="std of the mixing weights' xi")
    probe_steps: int = Field(10, ge=1, description="probe fitting steps per training step")
    rotate: bool = Field(True, description="an adapter set's hosts take turns step by step")
    leak_every: int = Field(20, ge=1, description="steps per leak/accuracy checkpoint")
    label_epsilon: float | None = Field(
        None,
        gt=0,
        description="label DP: train on labels randomized at this epsilon (none: off); every"
        " host's view is then eps-label-DP, in every setting",
    )


def loadable(backbone: str) -> bool:
    """tiny-bert, a local model directory, a model in the local Hugging Face cache, or a
    packaged encoder (its weights checked here: a mismatch is a ValueError)."""
    from huggingface_hub import try_to_load_from_cache  # here: slow to import (tqdm)

    backbone = model_path(backbone)
    if backbone == TINY or (Path(backbone) / "config.json").is_file():
        return True
    try:
        return isinstance(try_to_load_from_cache(backbone, "config.json"), str)
    except ValueError:  # not a hub name either
        return False


@register_method
class SplitLoRA(Method):
    name = "split_lora"
    doc = "label-private split LoRA: P3EFT, head-only, vanilla split LoRA, distance correlation"
    params = SplitParams
    # one synchronous step at a time with every host; no client-update privacy mechanisms
    supports = Supports(
        partial=False,
        overcommit=False,
        deadline=False,
        privacy=frozenset(),
        resume=frozenset(),
        vectorized=False,
    )
    loop = "fedsim.servers.split:run_split"

    def resolve(self, scenario):
        """Baselines use one adapter and one shard; the federation's nodes are the hosts; the
        task must be text and the backbone loadable here (hub names only from the cache)."""
        p = scenario.algorithm
        if scenario.data.dataset not in TEXT:
            raise ValueError(
                f"data.dataset: {scenario.data.dataset!r} is not text (one of {', '.join(TEXT)})"
            )
        if not loadable(p.backbone):
            raise ValueError(
                f"algorithm.backbone: {p.backbone!r} is not 'tiny-bert', a local model"
                " directory or a model in the local Hugging Face cache"
            )
        if p.method != "p3eft":
            p = p.model_copy(update={"adapters": 1, "shards": 1})
        if 1 < p.hosts < p.adapters * p.shards:
            raise ValueError(
                f"algorithm.hosts: {p.hosts} hosts cannot keep {p.adapters} adapter sets x"
                f" {p.shards} shards apart: multi-party P3EFT needs at least"
                f" {p.adapters * p.shards} hosts (1 host is the two-party setting)"
            )
        data = scenario.data.model_copy(update={"num_clients": p.hosts})
        return scenario.model_copy(update={"algorithm": p, "data": data})
