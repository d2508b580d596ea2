"""Shapes of every part, the separator's orthogonality, MAE masking, optimizer groups."""

from __future__ import annotations

import torch

from tests.training.conftest import IMAGE_SIZE, micro_overrides
from training.config import PFViTConfig
from training.model import (
    FACTORIES,
    PFViT,
    patchify,
    pfvit_micro,
    pfvit_tiny,
    random_masking,
    sincos_pos_embed_2d,
    unpatchify,
)


def make_model(**kw) -> PFViT:
    torch.manual_seed(0)
    return PFViT(PFViTConfig(**{**micro_overrides(), "num_classes": 3, "labels": ["a", "b", "neutral"], **kw}))


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
        assert model.discriminate(x).shape == (n,)
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
    decay, no_decay = model.optim_groups("main", 0.05)
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.encoder.cls_token) not in decay_ids
    assert id(model.encoder.blocks[0].norm1.weight) not in decay_ids
    assert id(model.encoder.blocks[0].attn.qkv.bias) not in decay_ids
    assert id(model.encoder.blocks[0].attn.qkv.weight) in decay_ids
    assert no_decay["weight_decay"] == 0.0
    d_params = {id(p) for g in model.optim_groups("discriminator", 0.05) for p in g["params"]}
    assert d_params.isdisjoint(decay_ids | {id(p) for p in no_decay["params"]})
    assert len(d_params) == len(list(model.discriminator.parameters()))


def test_factories() -> None:
    assert set(FACTORIES) == {"micro", "tiny", "small", "base"}
    assert pfvit_micro().config.image_size == 64
    tiny = pfvit_tiny()
    assert (tiny.config.embed_dim, tiny.config.depth, tiny.config.num_heads, tiny.config.image_size) == (192, 12, 3, 224)
    assert 5.0e6 < tiny.num_params("recognition") < 6.0e6  # ViT-Tiny is 5.6M in the paper's table
