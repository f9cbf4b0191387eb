"""The pretrained encoder and real text: all-MiniLM-L6-v2 from the package registry, its
weights checked by sha256 and read through transformers' local-path loading (the same
sentence vectors as sentence-transformers' own pipeline), and SST-2 from ../shared/data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.config import load_scenario
from fedsim.data import DataConfig, load_dataset
from fedsim.encoders import PACKAGED, model_path, verified
from fedsim.privacy.backbone import BackboneSpec, encode_text, tokenizer, trimmed
from fedsim.privacy.split import BackboneHost
from fedsim.results import read_metrics
from fedsim.runtime import launch

from .conftest import SHARED

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SST2 = SHARED / "data" / "sst2"
SST2_DATA = {
    "dataset": "text_tsv",
    "options": {
        "path": str(SST2 / "train.tsv.gz"),
        "test_path": str(SST2 / "test.tsv"),
        "train_size": 400,
    },
}


def test_a_file_is_used_only_if_it_hashes_to_the_published_sha256(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert verified(f, good) == f
    with pytest.raises(ValueError, match=f"^algorithm.backbone: {f} has sha256 {good}, not"):
        verified(f, "0" * 64)
    with pytest.raises(ValueError, match="cannot read"):
        verified(tmp_path / "missing.safetensors", good)


def test_a_packaged_encoder_that_is_not_installed_names_its_extra(monkeypatch):
    monkeypatch.setitem(PACKAGED, "org/absent", ("no_such_package_here", "absent", "0" * 64))
    with pytest.raises(ValueError, match=r"installed by the 'absent' extra"):
        model_path("org/absent")
    assert model_path("/some/local/dir") == "/some/local/dir"  # anything else passes through


def test_minilm_loads_by_hub_name_and_gives_sentence_transformers_vectors():
    path = model_path(MINILM)  # checks the 90 MB of weights against the published sha256
    weights = Path(path, "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == PACKAGED[MINILM][2]
    spec = BackboneSpec(MINILM, 0, 0, 1, 4, 8)
    host = BackboneHost(spec)
    words = ["a gripping , funny film", "tedious and far too long", "it 's fine"]
    vocab = sorted({w for s in words for w in s.split()})
    ids = np.array(
        [[vocab.index(w) for w in s.split()] + [0] * (5 - len(s.split())) for s in words]
    )
    assert tokenizer(spec, vocab).name_or_path == path
    (x,) = encode_text(spec, vocab, ids)
    theta = {k: torch.zeros_like(v) for k, v in host.params["a0"].items()}  # LoRA B = 0 too
    ours = torch.nn.functional.normalize(host.forward(x, "a0", theta), dim=1)
    from sentence_transformers import SentenceTransformer  # installed with the extra

    texts = [" ".join(vocab[i] for i in row) for row in ids]
    ref = SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert float(ours[0] @ ours[1]) < 0.9  # different sentences, different vectors


def test_a_batch_cut_to_its_longest_sentence_has_the_same_activations():
    spec = BackboneSpec(MINILM, 0, 0, 1, 4, 8)
    host = BackboneHost(spec)
    vocab = ["", "a", "gripping", "film", "tedious", "and", "long", "fine"]
    ids = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 0, 0], [7, 0, 0, 0, 0], [1, 2, 3, 5, 6]])
    (x,) = encode_text(spec, vocab, ids)
    batch = {k: v[:3] for k, v in x.items()}  # the long sentence is not in this batch
    short = trimmed(batch)
    lengths = batch["attention_mask"].sum(1)
    assert short["input_ids"].shape[1] == int(lengths.max()) < batch["input_ids"].shape[1]
    assert torch.equal(short["attention_mask"].sum(1), lengths)  # only padding went
    gen = torch.Generator().manual_seed(0)
    theta = {k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in host.params["a0"].items()}
    torch.testing.assert_close(
        host.forward(short, "a0", theta), host.forward(batch, "a0", theta), atol=1e-5, rtol=1e-5
    )


def test_sst2_reads_in_place_with_its_splits():
    ds = load_dataset(DataConfig.model_validate(SST2_DATA), seed=0)
    assert len(ds.y_train) == 400 and len(ds.y_test) == 872  # GLUE's validation set
    assert ds.num_classes == 2 and set(np.unique(ds.y_test)) == {0, 1}
    vocab = ds.meta["vocab"]
    line = (SST2 / "test.tsv").read_text().splitlines()[1].split("\t")[0]
    known = set(vocab[1:])  # word 0 pads
    assert [vocab[i] for i in ds.x_test[0] if i] == [w for w in line.split() if w in known]


def test_split_lora_runs_on_minilm_and_sst2(tmp_path):
    raw = {
        "name": "minilm",
        "rounds": 2,
        "data": SST2_DATA | {"options": SST2_DATA["options"] | {"max_words": 24}},
        "algorithm": {"name": "split_lora", "method": "vanilla", "backbone": MINILM, "rank": 4},
    }
    launch(load_scenario(raw), tmp_path)
    (row,) = read_metrics(tmp_path)[-1:]
    assert row["round"] == 2 and 0 <= row["eval_accuracy"] <= 1


def test_a_text_file_without_its_columns_is_a_load_error(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nfine\t1\n")
    data = {"dataset": "text_tsv", "options": {"path": str(bad), "test_path": str(bad)}}
    with pytest.raises(ValueError, match="needs columns 'sentence' and 'label'"):
        load_dataset(DataConfig.model_validate(data), seed=0)
