"""Backbones for split learning without a hub: `tiny-bert` (a small BERT, randomly initialised
from a seed, with a word-level tokenizer over the task's vocabulary) or any `transformers`
encoder by local path, by a name already in the local Hugging Face cache, or by the hub name
of an encoder packaged on the registry (fedsim/encoders.py: checked by sha256).

Hosts load the weights (`load_backbone`); the label party needs only the tokenizer, the
hidden size and the adapters' shapes, which it reads from the config on the meta device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertTokenizerFast

from fedsim.encoders import model_path

TINY = "tiny-bert"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything a host needs to build the same frozen model with the same adapter slots."""

    name: str  # "tiny-bert", a local path, or a cached model name
    vocab: int  # the task's number of words (sizes tiny-bert's embeddings)
    seed: int  # tiny-bert's initialisation
    adapters: int  # n adapter slots "a0".."a{n-1}"
    rank: int
    alpha: int

    def to_dict(self) -> dict:
        return asdict(self)


def model_config(spec: BackboneSpec):
    if spec.name == TINY:
        return BertConfig(
            vocab_size=len(SPECIALS) + spec.vocab,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
        )
    return AutoConfig.from_pretrained(model_path(spec.name), local_files_only=True)


def lora_config(spec: BackboneSpec) -> LoraConfig:
    """PEFT's default LoRA targets for the architecture (BERT: query and value), dropout 0."""
    kind = model_config(spec).model_type
    if kind not in TARGETS:
        raise ValueError(f"model type {kind!r} has no default LoRA target modules in PEFT")
    return LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0, target_modules=TARGETS[kind]
    )


PREFIX = "base_model.model."  # PeftModel's path to the wrapped encoder


def with_adapters(model: nn.Module, spec: BackboneSpec) -> nn.Module:
    """The encoder with n named LoRA adapters "a0".."a{n-1}", through PEFT's own API (not
    transformers' integration layer, whose PEFT version floor moves with its releases)."""
    if spec.adapters == 0:
        return model
    config = lora_config(spec)
    peft_model = get_peft_model(model, config, adapter_name="a0")
    for i in range(1, spec.adapters):
        peft_model.add_adapter(f"a{i}", config)
    return peft_model


def adapter_params(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """One adapter set's parameters, keyed by name without the adapter and PEFT's prefix (the
    keys the label party's theta uses)."""
    return {
        name.removeprefix(PREFIX).replace(f".{adapter}.", "."): p
        for name, p in model.named_parameters()
        if f".{adapter}." in name
    }


def load_backbone(spec: BackboneSpec) -> nn.Module:
    """The frozen encoder with adapter slots a0..a{n-1} (a host's model)."""
    if spec.name == TINY:
        with torch.random.fork_rng():
            torch.manual_seed(spec.seed)
            model = AutoModel.from_config(model_config(spec))
    else:
        model = AutoModel.from_pretrained(model_path(spec.name), local_files_only=True)
    model.requires_grad_(False)
    return with_adapters(model, spec).eval()  # no dropout anywhere: calls are deterministic


def set_adapter(model: nn.Module, adapter: str) -> None:
    """Make `adapter` the one the next forward uses."""
    if not isinstance(model, PeftModel):
        raise ValueError("the backbone has no adapters")
    model.set_adapter(adapter)


def adapter_init(spec: BackboneSpec, gen: torch.Generator) -> list[dict[str, Tensor]]:
    """The label party's fresh adapter weights, PEFT's default initialisation (A uniform in
    +-1/sqrt(fan_in), i.e. Kaiming with a = sqrt(5); B = 0), shaped on the meta device."""
    with torch.device("meta"):
        model = with_adapters(AutoModel.from_config(model_config(spec)), spec)
    shapes = {name: p.shape for name, p in adapter_params(model, "a0").items()}
    thetas = []
    for _ in range(spec.adapters):
        theta = {}
        for key, shape in shapes.items():
            if ".lora_A." in key:
                bound = 1 / math.sqrt(shape[1])
                theta[key] = (2 * torch.rand(shape, generator=gen) - 1) * bound
            else:
                theta[key] = torch.zeros(shape)
        thetas.append(theta)
    return thetas


def hidden_size(spec: BackboneSpec) -> int:
    return int(model_config(spec).hidden_size)


def words(vocab: list[str]) -> list[str]:
    """The task's words: its vocabulary less padding's "" (what tiny-bert has tokens for)."""
    return [w for w in vocab if w]


def tokenizer(spec: BackboneSpec, vocab: list[str]):
    """tiny-bert: one token per task word; otherwise the model's own tokenizer."""
    if spec.name == TINY:
        tokens = [*SPECIALS, *words(vocab)]
        return BertTokenizerFast(vocab={w: i for i, w in enumerate(tokens)})
    return AutoTokenizer.from_pretrained(model_path(spec.name), local_files_only=True)


def encode_text(spec: BackboneSpec, vocab: list[str], *word_ids: np.ndarray) -> list[dict]:
    """Token ids and attention mask of each array of sentences, padded to its longest (the
    tokenizer is loaded once for all)."""
    tok = tokenizer(spec, vocab)
    tok.padding_side = "right"  # what `trimmed` relies on
    out = []
    for rows in word_ids:
        texts = [" ".join(vocab[i] for i in row) for row in rows]
        enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def trimmed(x: dict[str, Tensor]) -> dict[str, Tensor]:
    """A batch's token inputs cut to its longest sentence. Padding is on the right, so the
    columns dropped are padding in every row and no activation changes; a batch of 32 SST-2
    phrases is 40 tokens long on average against the training set's 65."""
    width = int(x["attention_mask"].sum(1).max())
    return {k: v[:, :width].contiguous() for k, v in x.items()}
