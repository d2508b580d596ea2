"""Data specs: parsing and printing round-trip (the shipped card's spec included), one registry
of kinds whose options the command line reaches, clear errors, the balanced sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.test_data import _write_affectnet
from training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from training.config import PFViTConfig, TrainConfig
from training.data import DATA_KINDS, BalancedSampler, DataSpec, build_data, build_dataset
from training.data.synthetic import SyntheticFaces
from training.model import PFViT

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CARD = REPO / "models" / "pfvit-micro-rendered" / "card.json"


def test_registry_covers_every_documented_kind() -> None:
    assert set(DATA_KINDS) == {
        "rafdb",
        "ferplus",
        "affectnet",
        "affectnet7",
        "affectnet8",
        "folder",
        "fer2013",
        "rendered",
        "synthetic",
    }


@pytest.mark.parametrize(
    "text",
    [
        "rendered:seed=0,size=64,n=16000",
        "rendered:seed=0,size=64,n=16000,val_n=800,test_n=2000",
        "synthetic:n=64",
        "synthetic:",
        "rafdb:/data/RAF-DB",
        "affectnet7:/data/AffectNet,face=box,precropped=true",
        "ferplus:/data/FERPlus,source=pixels",
        "folder:data",
        "fer2013:/data/fer2013-aligned48",
        "fer2013:/data/fer2013,cache=false",
    ],
)
def test_spec_round_trips(text: str) -> None:
    spec = DataSpec.parse(text)
    assert str(spec) == text and DataSpec.parse(str(spec)) == spec


def test_the_shipped_cards_spec_parses_back() -> None:
    card = json.loads(SHIPPED_CARD.read_text())
    text = card["training"]["recipe"]["stage_config"]["data"]
    spec = DataSpec.parse(text)
    assert (spec.kind, str(spec)) == ("rendered", text)
    assert spec.typed_options() == {"seed": 0, "size": 64, "n": 16000}
    assert len(build_data(spec, "train", 64, augment=False)) == 16000


def test_the_spec_in_a_checkpoint_parses_back(tmp_path: Path) -> None:
    spec = DataSpec.of("affectnet", "/data/AffectNet", num_classes=7, precropped=True)
    model = PFViT(
        PFViTConfig(
            image_size=32,
            patch_size=8,
            embed_dim=32,
            depth=1,
            num_heads=2,
            emotion_dim=8,
            decoder_dim=16,
            decoder_depth=1,
            decoder_heads=2,
            disc_patch_size=8,
            labels=["a", "b"],
        )
    )
    path = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data=str(spec)))
    assert DataSpec.parse(load_checkpoint(path)["stage_config"]["data"]) == spec
    assert str(spec) == "affectnet:/data/AffectNet,num_classes=7,precropped=true"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("imagenet:/data", "rafdb, ferplus, affectnet, affectnet7, affectnet8, folder, fer2013, rendered, synthetic"),
        ("fer2013:/x,colour=red", "its options: cache"),
        ("rafdb", "needs a folder"),
        ("synthetic:64", "not key=value"),
        ("affectnet:/x,colour=red", "its options: num_classes, face, precropped, skip_missing"),
        ("affectnet7:/x,num_classes=8", "has no option"),
        ("affectnet:/x,precropped=maybe", "true or false"),
        ("rendered:n=ten", "n=ten"),
        ("rendered:n=8,n=9", "twice"),
    ],
)
def test_bad_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataSpec.parse(text)


def test_dataset_options_are_reachable_from_the_spec(tmp_path: Path) -> None:
    _write_affectnet(tmp_path)
    seven = build_data(f"affectnet7:{tmp_path}", "train", 112, augment=False)
    same = build_dataset("affectnet", tmp_path, "train", 112, augment=False, num_classes=7)
    assert seven.labels == same.labels and seven.targets == same.targets == [0, 1]
    boxed = build_data(f"affectnet:{tmp_path},face=box,skip_missing=true", "train", 112, augment=False)
    assert boxed.face == "box" and len(boxed.labels) == 8
    # Photographs have no true poker face: a placeholder, flagged absent.
    item = boxed[0]
    assert item["poker_face"].shape == item["image"].shape and not bool(item["has_poker_face"])


def test_generated_kinds_follow_their_options() -> None:
    train = build_data("synthetic:n=12,seed=3", "train", 32, augment=False)
    val = build_data("synthetic:n=12,seed=3", "val", 32, augment=False)
    assert isinstance(train, SyntheticFaces) and (len(train), len(val)) == (12, 8)
    assert not torch.equal(train[0]["image"], val[0]["image"])
    test = build_data("rendered:seed=0,size=32,n=16,val_n=8,test_n=24", "test", 32, augment=False)
    assert len(test) == 24
    with pytest.raises(ValueError, match="64 px faces, the model takes 32 px"):
        build_data("rendered:size=64,n=16", "train", 32, augment=False)


def test_balanced_sampler_balances_follows_the_epoch_and_shards() -> None:
    targets = [0] * 90 + [1] * 9 + [2] + [-1] * 5
    sampler = BalancedSampler(targets, 3, seed=1)
    draws = torch.tensor([targets[i] for i in sampler])
    assert len(draws) == 100 and (draws >= 0).all()
    counts = torch.bincount(draws, minlength=3)
    assert counts.min() > 15  # about a third each, against 1 % for class 2 in the data
    again = list(BalancedSampler(targets, 3, seed=1))
    assert again == list(sampler)  # a pure function of (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != again
    shards = [list(BalancedSampler(targets, 3, num_replicas=2, rank=r, seed=1)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert [i for pair in zip(*shards) for i in pair] == again
