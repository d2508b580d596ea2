"""Shapes of every part, the separator's orthogonality, MAE masking, optimizer groups."""

from __future__ import annotations

import pytest
import torch

from tests.training.conftest import IMAGE_SIZE, micro_overrides
from training.adversarial import build_discriminator
from training.blocks import patchify, random_masking, sincos_pos_embed_2d, unpatchify
from training.config import PFViTConfig
from training.model import PFViT, optim_groups
from training.sizes import FACTORIES, MODEL_SIZES, pfvit_micro, pfvit_tiny


def make_model(**kw) -> PFViT:
    torch.manual_seed(0)
    return PFViT(PFViTConfig(**{**micro_overrides(), "labels": ["a", "b", "neutral"], **kw}))


def test_shapes_of_every_part() -> None:
    model = make_model().eval()
    c = model.config
    n, length = 2, c.num_patches
    x = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        z = model.forward_features(x)
        assert z.shape == (n, 1 + length, c.embed_dim)
        z_e, z_p = model.separate(z)
        assert z_e.shape == z_p.shape == z.shape
        logits, embedding = model.forward_head(z_e)
        assert logits.shape == (n, c.num_classes) and embedding.shape == (n, c.embed_dim)
        assert model.generate(z).shape == x.shape
        poker = model.poker_face(x)
        assert poker.shape == x.shape and poker.min() >= 0 and poker.max() <= 1
        assert build_discriminator(c)(x).shape == (n,)
        assert torch.equal(model(x), logits)
        loss, pred, mask = model.forward_pretrain(x, 0.75)
        assert loss.ndim == 0 and pred.shape == (n, length, c.patch_size**2 * 3) and mask.shape == (n, length)


def test_separator_is_orthogonal() -> None:
    model = make_model()
    w = model.separator.projector_basis  # [k, D]
    k = model.config.emotion_dim
    assert torch.allclose(w @ w.t(), torch.eye(k), atol=1e-5)
    z = torch.randn(4, 5, model.config.embed_dim)
    z_e, z_p = model.separate(z)
    assert torch.allclose(z_e + z_p, z, atol=1e-5)
    assert (z_e * z_p).sum(-1).abs().max() < 1e-4
    # e_n lies in the emotional subspace: projecting it changes nothing.
    e_n = model.separator.neutral()
    e_n_e, e_n_p = model.separate(e_n)
    assert torch.allclose(e_n_e, e_n, atol=1e-5) and e_n_p.abs().max() < 1e-5
    # Orthogonality survives gradient steps on the basis, with the optimizers training uses.
    for make_opt in (lambda p: torch.optim.SGD(p, lr=0.5), lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05)):
        opt = make_opt(model.separator.parameters())
        for _ in range(3):
            opt.zero_grad()
            model.separate(z)[0].pow(2).sum().backward()
            opt.step()
        w = model.separator.projector_basis
        assert torch.allclose(w @ w.t(), torch.eye(k), atol=1e-4)


def test_masking_keeps_exact_count_and_restores_order() -> None:
    torch.manual_seed(0)
    n, length, dim = 3, 16, 4
    tokens = torch.arange(length, dtype=torch.float32)[None, :, None].expand(n, length, dim).clone()
    kept, mask, ids_restore = random_masking(tokens, 0.75)
    assert kept.shape == (n, int(length * 0.25), dim)
    assert torch.equal(mask.sum(1), torch.full((n,), float(length - kept.shape[1])))
    # Visible tokens are exactly the unmasked positions.
    for i in range(n):
        assert set(kept[i, :, 0].long().tolist()) == set((mask[i] == 0).nonzero().flatten().tolist())
    # Filling the masked slots and unshuffling puts every kept token back at its position.
    filled = torch.cat([kept, torch.full((n, length - kept.shape[1], dim), -1.0)], dim=1)
    restored = torch.gather(filled, 1, ids_restore[..., None].expand(-1, -1, dim))
    visible = mask == 0
    assert torch.equal(restored[visible], tokens[visible])
    assert (restored[~visible] == -1).all()


def test_patchify_roundtrip_and_pos_embed() -> None:
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(unpatchify(patchify(x, 8), 8, 4), x)
    pe = sincos_pos_embed_2d(16, 4)
    assert pe.shape == (1, 17, 16) and torch.all(pe[0, 0] == 0)


def test_optimizer_groups_skip_norms_biases_and_tokens() -> None:
    model = make_model()
    decay, no_decay = model.optim_groups(0.05)
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.encoder.cls_token) not in decay_ids
    assert id(model.encoder.blocks[0].norm1.weight) not in decay_ids
    assert id(model.encoder.blocks[0].attn.qkv.bias) not in decay_ids
    assert id(model.encoder.blocks[0].attn.qkv.weight) in decay_ids
    assert no_decay["weight_decay"] == 0.0
    # The model holds no discriminator: its parameters are E, S, G and H only.
    assert not any("discriminator" in name for name, _ in model.named_parameters())
    disc = build_discriminator(model.config)
    d_params = {id(p) for g in optim_groups(disc, 0.05) for p in g["params"]}
    assert len(d_params) == len(list(disc.parameters()))


def test_factories() -> None:
    assert set(FACTORIES) == set(MODEL_SIZES) == {"micro", "tiny", "small", "base"}
    assert pfvit_micro().config.image_size == 64
    tiny = pfvit_tiny(labels=[str(i) for i in range(7)])
    assert (tiny.config.embed_dim, tiny.config.depth, tiny.config.num_heads, tiny.config.image_size) == (
        192,
        12,
        3,
        224,
    )
    assert 5.0e6 < tiny.num_params("recognition") < 6.0e6  # ViT-Tiny is 5.6M in the paper's table


def test_classes_come_from_the_labels() -> None:
    cfg = PFViTConfig(**micro_overrides(), labels=["a", "b", "neutral"])
    assert cfg.num_classes == 3 and "num_classes" not in cfg.to_dict()
    assert PFViTConfig.from_dict(cfg.to_dict()) == cfg
    # Configs stored before K was derived still load, and must agree with their labels.
    assert PFViTConfig.from_dict({**cfg.to_dict(), "num_classes": 3}) == cfg
    with pytest.raises(ValueError, match="3 labels for 4 classes"):
        PFViTConfig.from_dict({**cfg.to_dict(), "num_classes": 4})
    # A model without labels (pre-training) has no classifier.
    bare = PFViT(PFViTConfig(**micro_overrides()))
    assert bare.config.num_classes == 0 and not any(n.startswith("head.") for n, _ in bare.named_parameters())


def test_architecture_overrides_are_typed_and_checked() -> None:
    assert PFViTConfig.parse_overrides("image_size=112, poker_mode=edit,mlp_ratio=2") == {
        "image_size": 112,
        "poker_mode": "edit",
        "mlp_ratio": 2.0,
    }
    for bad in ("image_size=big", "labels=a", "colour=red", "image_size"):
        with pytest.raises(ValueError):
            PFViTConfig.parse_overrides(bad)


@pytest.mark.parametrize("stem", ["patch", "conv", "deepconv"])
def test_every_stem_gives_the_patch_grid_and_hides_masked_pixels(stem: str) -> None:
    model = make_model(stem=stem).eval()
    c = model.config
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 1 + c.num_patches, c.embed_dim)
        # MAE: what the masked patches hold must not reach the visible tokens.
        torch.manual_seed(1)
        z, mask, _ = model.encoder.forward_masked(x, 0.75)
        hidden = (
            mask.view(2, 1, model.encoder.grid, model.encoder.grid)
            .repeat_interleave(c.patch_size, 2)
            .repeat_interleave(c.patch_size, 3)
        )
        torch.manual_seed(1)
        z_other, _, _ = model.encoder.forward_masked(x + 5.0 * hidden, 0.75)
    assert torch.allclose(z, z_other, atol=1e-5)


def test_deepconv_stem_has_two_convolutions_per_stage() -> None:
    convs = lambda m: sum(isinstance(layer, torch.nn.Conv2d) for layer in m.encoder.patch_embed.modules())  # noqa: E731
    assert convs(make_model(stem="deepconv")) == 2 * convs(make_model(stem="conv")) - 1  # the 1x1 projection is shared
    with pytest.raises(ValueError, match="stem"):
        make_model(stem="resnet")


def test_poker_luma_needs_edit_mode() -> None:
    with pytest.raises(ValueError, match="poker_luma"):
        make_model(poker_luma=True, poker_mode="direct")
    assert make_model(poker_luma=True, poker_mode="edit").config.poker_luma
