"""Self-supervised baselines: BrainLM, Brain-JEPA, BrainMass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bsym.data.dataset import WindowDataset
from bsym.models import available, build, get_spec
from bsym.models.brainjepa import spatiotemporal_masks
from bsym.models.brainmass import pearson
from bsym.models.ema import ema_momentum
from bsym.models.gradients import fc_gradients, group_fc
from bsym.testing import write_toy_store
from bsym.train import TrainConfig, train

torch.set_num_threads(1)

# name -> (ROIs, time points) of the tiny test inputs
SIZES = {"brainlm": (16, 40), "brainjepa": (16, 64), "brainmass": (16, 40)}
EMA = ("brainjepa", "brainmass")
TARGET = {"brainjepa": ("target_encoder", "context_encoder"), "brainmass": ("target", "online")}


def make(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return build(name, preset="tiny", **overrides)


def batch_for(name, b=4, seed=0):
    r, t = SIZES[name]
    g = torch.Generator().manual_seed(seed)
    # a few shared rhythms, so masked parts are predictable from the rest
    latent = torch.sin(torch.arange(t)[None] * torch.rand(3, 1, generator=g) + 6 *
                       torch.rand(3, 1, generator=g))
    x = torch.randn(b, r, 3, generator=g) @ latent + 0.1 * torch.randn(b, r, t, generator=g)
    return {"bold": x}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def step(model, optimizer, batch, seed, n=1):
    """``n`` optimizer steps on ``batch`` with the masks of ``seed``; the losses."""
    losses = []
    for i in range(n):
        optimizer.zero_grad()
        loss = model.pretrain_loss(batch, generator=gen(seed))
        loss.backward()
        optimizer.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step(i + 1, n)
        losses.append(float(loss.detach()))
    return losses


def optimizer_for(model, lr=1e-3):
    return torch.optim.AdamW(model.stage_parameters("all"), lr=lr)


# -- registry and sizes ------------------------------------------------------------------
def test_registered_with_presets():
    assert {"brainlm", "brainjepa", "brainmass"} <= set(available())
    assert {"tiny", "legacy", "paper"} <= set(get_spec("brainlm").presets)
    assert {"tiny", "vits", "vitb"} <= set(get_spec("brainjepa").presets)
    assert {"tiny", "paper"} <= set(get_spec("brainmass").presets)


@pytest.mark.parametrize("name,preset,key,published", [
    ("brainlm", "legacy", "total", 13e6),          # 424 ROIs x 200 points
    ("brainlm", "paper", "total", 111e6),
    ("brainjepa", "vits", "encoder", 22e6),        # 450 ROIs x 160 points
    ("brainjepa", "vitb", "encoder", 86e6),
    ("brainmass", "paper", "online", 10e6),        # 100 ROIs
])
def test_paper_sizes_match_published(name, preset, key, published):
    counts = build(name, preset=preset).param_counts()
    if key == "online":
        counts["online"] = sum(v for k, v in counts.items() if k.startswith("online."))
    assert abs(counts[key] - published) / published < 0.15, counts


# -- interface ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SIZES))
def test_roi_attention_is_per_layer_and_head(name):
    # loss, gradients, embeddings and determinism: tests/test_model_contract.py
    model = make(name)
    r, _ = SIZES[name]
    maps = model.attention(batch_for(name, b=3))
    assert maps["roi"].shape == (2, 3, model.config["heads"], r, r)  # tiny presets: 2 layers


@pytest.mark.parametrize("name", sorted(SIZES))
def test_bad_input_names_expected_and_received(name):
    model = make(name)
    r, t = SIZES[name]
    with pytest.raises(ValueError, match=rf"\(B, {r}, {t}\).*received shape \(2, {r}, {t + 1}\)"):
        model.pretrain_loss({"bold": torch.zeros(2, r, t + 1)})
    with pytest.raises(ValueError, match="needs batch\\['bold'\\]"):
        model.embed({"sc": torch.zeros(2, r, r)})


@pytest.mark.parametrize("name,kwargs,message", [
    ("brainlm", {"n_timepoints": 50}, "multiple of patch_size"),
    ("brainlm", {"heads": 3}, "divisible"),
    ("brainlm", {"mask_ratio": 1.0}, "mask_ratio"),
    ("brainjepa", {"n_timepoints": 32}, "at least 3 patches"),
    ("brainjepa", {"obs_scale": [0.9, 0.5]}, "obs_scale"),
    ("brainjepa", {"loss": "l1"}, "loss"),
    ("brainjepa", {"patch_embed_std": 0.0}, "patch_embed_std"),
    ("brainmass", {"heads": 3}, "set dim="),
    ("brainmass", {"view_fraction": 0.01}, "at least 3"),
    ("brainmass", {"byol_weight": 0, "mrm_weight": 0, "mrc_weight": 0}, "at least one"),
])
def test_constructor_validates(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(name, **kwargs)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_loss_falls_on_a_fixed_batch(name):
    model = make(name)
    batch = batch_for(name)
    losses = step(model, optimizer_for(model, lr=3e-3), batch, seed=1, n=12)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert min(losses[-3:]) < 0.8 * losses[0], losses


# -- engine: the EMA hook ----------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_toy_store(tmp_path_factory.mktemp("ssl") / "store", n_subjects=4, n_rois=16,
                           n_timepoints=64)


@pytest.mark.parametrize("name", EMA)
def test_the_engine_moves_the_ema_target(name, store):
    dataset = WindowDataset(store, window=SIZES[name][1], with_sc=False)
    config = TrainConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=0, progress=False,
                         device="cpu", seed=7)
    model = make(name, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, dataset, config)  # the engine calls after_optimizer_step
    target = TARGET[name][0]
    after = model.state_dict()
    assert [k for k in after if k.startswith(target + ".") and after[k].is_floating_point()
            and not torch.equal(after[k], before[k])]


# -- EMA targets -------------------------------------------------------------------------
@pytest.mark.parametrize("name", EMA)
def test_ema_target_gets_no_gradient_and_follows_the_hook(name):
    model = make(name)
    target_name, online_name = TARGET[name]
    target, online = getattr(model, target_name), getattr(model, online_name)
    trained = {id(p) for p in model.stage_parameters("all")}
    assert all(not p.requires_grad and id(p) not in trained for p in target.parameters())
    for t, o in zip(target.parameters(), online.parameters()):
        assert torch.equal(t, o)  # the target starts as a copy

    optimizer = optimizer_for(model, lr=1e-2)
    loss = model.pretrain_loss(batch_for(name), generator=gen())
    loss.backward()
    assert all(p.grad is None for p in target.parameters())
    optimizer.step()
    old = [p.detach().clone() for p in target.parameters()]
    m = model.after_optimizer_step(5, 10)
    changed = 0
    for t, t0, o in zip(target.parameters(), old, online.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * o.detach())
        changed += not torch.equal(t, t0)
    assert changed > 0


def test_momentum_schedules():
    assert ema_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert ema_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert ema_momentum(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert ema_momentum(50, 100, 0.996, 1.0, "cosine") == pytest.approx(0.998)
    assert ema_momentum(10, None, 0.996, 1.0) == pytest.approx(0.996)
    jepa = make("brainjepa")
    assert jepa.after_optimizer_step(1, 2) == pytest.approx(0.998)
    mass = make("brainmass")
    assert mass.after_optimizer_step(1, 2) == pytest.approx(0.996)  # constant, as published


# -- BrainLM -----------------------------------------------------------------------------
def test_brainlm_masks_tokens_exactly_and_hides_them_from_the_encoder():
    model = make("brainlm", patch_size=10)  # 16 ROIs x 4 patches = 64 tokens
    mask = model.draw_mask(5, gen(2))
    assert mask.shape == (5, 64) and (mask.sum(1) == 48).all()  # round(0.75 * 64)
    assert not torch.equal(mask[0], mask[1])
    x = batch_for("brainlm")["bold"][:1]
    keep = (~mask[:1]).nonzero()[:, 1][None]
    changed = x.clone().reshape(1, 64, 10)
    changed[mask[:1]] += 5.0
    changed = changed.reshape(x.shape)
    assert torch.equal(model.encode(x, keep), model.encode(changed, keep))
    assert model.encode(x).shape == (1, 65, 32)  # CLS + every token without a mask


def test_brainlm_coordinates():
    model = make("brainlm", spatial_position="coordinates")
    with pytest.raises(RuntimeError, match="set_coordinates"):
        model.embed(batch_for("brainlm"))
    model.set_coordinates(torch.randn(16, 3) * 40)
    assert torch.isfinite(model.pretrain_loss(batch_for("brainlm"), generator=gen()))
    with pytest.raises(ValueError, match=r"\(16, 3\)"):
        model.set_coordinates(torch.zeros(15, 3))


# -- Brain-JEPA --------------------------------------------------------------------------
def test_brainjepa_spatiotemporal_masks_at_paper_size():
    r, p = 450, 10
    masks = spatiotemporal_masks(6, r, p, gen(0))
    again = spatiotemporal_masks(6, r, p, gen(0))
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    obs, alpha, beta, gamma = (masks[k] for k in ("observation", "alpha", "beta", "gamma"))
    for i in range(6):
        observed_rois = obs[i].any(1)
        observed_times = obs[i].any(0).nonzero().flatten()
        assert not (obs[i] & (alpha[i] | beta[i] | gamma[i])).any()
        # cross-ROI: other ROIs, inside the observation's time range
        a_rois, a_times = alpha[i].any(1), alpha[i].any(0).nonzero().flatten()
        assert not (a_rois & observed_rois).any()
        assert 0.45 * r - 1 <= int(a_rois.sum()) <= 0.6 * r
        assert a_times.min() >= observed_times.min() - 1 and \
            a_times.max() <= observed_times.max() + 3
        # cross-time (observed ROIs) and double-cross (other ROIs) at the 3 outer patches
        side = beta[i].any(0) | gamma[i].any(0)
        assert not (side & obs[i].any(0)).any()
        assert not side[3:7].any()
        assert not (beta[i].any(1) & ~observed_rois).any()
        assert not (gamma[i].any(1) & observed_rois).any()
        assert observed_rois.sum() >= 0.84 * r - 0.6 * r - 1
    target = alpha | beta | gamma
    n_ctx, n_tgt = int(obs.flatten(1).sum(1).min()), int(target.flatten(1).sum(1).min())
    assert masks["context"].shape == (6, n_ctx) and masks["target"].shape == (6, n_tgt)
    for i in range(6):
        assert obs[i].flatten()[masks["context"][i]].all()
        assert target[i].flatten()[masks["target"][i]].all()
        assert masks["context"][i].unique().numel() == n_ctx
    assert beta.any() and gamma.any()


def test_brainjepa_gradient_positioning(store):
    model = make("brainjepa", position="gradient")
    assert model.needs_gradients
    batch = batch_for("brainjepa")
    with pytest.raises(RuntimeError, match="set_gradients"):
        model.pretrain_loss(batch)
    train = WindowDataset(store, window=64, with_sc=False)
    model.set_gradients(fc_gradients(group_fc(train.iter_series()), model.n_gradients))
    assert not model.needs_gradients
    loss = model.pretrain_loss(batch, generator=gen())
    assert torch.isfinite(loss)
    loss.backward()
    assert model.context_encoder.position.proj.weight.grad.abs().sum() > 0
    assert model.predictor.position.proj.weight.grad.abs().sum() > 0
    other = make("brainjepa", position="gradient", seed=1)
    other.load_state_dict(model.state_dict())
    assert not other.needs_gradients
    assert torch.equal(other.embed(batch).roi, model.embed(batch).roi)
    with pytest.raises(ValueError, match=r"\(16, 4\)"):
        model.set_gradients(torch.zeros(16, 30))


def test_brainjepa_embeds_with_the_chosen_encoder():
    model = make("brainjepa")
    step(model, optimizer_for(model, lr=1e-2), batch_for("brainjepa"), seed=0, n=1)
    batch = batch_for("brainjepa", seed=1)
    target = model.embed(batch).subject
    model.embed_encoder = "context"
    context = model.embed(batch)
    assert not torch.equal(target, context.subject)
    context.subject.sum().backward()  # fine-tuning can go through the context encoder
    assert model.context_encoder.patch_embed.weight.grad is not None


# the published initialisation and predictor width, which the tiny preset departs from
PUBLISHED_TINY = {"predictor_dim": 16, "patch_embed_std": 0.02, "roi_position_std": 0.02}


def data_share(model, encoder, x):
    """Share of the layer-normalised tokens' energy that varies with the data.

    1 - share is the constant-and-position part (the same at a token position for
    every sample); near 0 means every window gets the same tokens: collapse.
    """
    with torch.no_grad():
        h = getattr(model, encoder)(model._patches(x), model._gradients())
        h = F.layer_norm(h, (h.shape[-1],))
    return float((h - h.mean(0)).pow(2).sum() / h.pow(2).sum())


def test_brainjepa_tiny_tokens_carry_the_data_at_initialisation():
    x = batch_for("brainjepa", b=32, seed=5)["bold"]
    assert data_share(make("brainjepa"), "target_encoder", x) > 0.5
    # std-0.02 weights on 16-point patches and on the ROI table: the random target
    # encoder's tokens are ~95% one shared vector and time code, its embeddings chance
    assert data_share(make("brainjepa", **PUBLISHED_TINY), "target_encoder", x) < 0.1


def test_brainjepa_tiny_context_encoder_does_not_collapse_in_training():
    def trained(**overrides):
        model = make("brainjepa", **overrides)
        optimizer, masks = optimizer_for(model), gen(0)
        for i in range(100):
            optimizer.zero_grad()
            model.pretrain_loss(batch_for("brainjepa", b=16, seed=i), generator=masks).backward()
            optimizer.step()
            model.after_optimizer_step(i + 1, 100)
        return model

    x = batch_for("brainjepa", b=32, seed=5)["bold"]
    assert data_share(trained(), "context_encoder", x) > 0.15
    # published init: one constant token for every window within 100 steps
    assert data_share(trained(**PUBLISHED_TINY), "context_encoder", x) < 0.02


# -- BrainMass ---------------------------------------------------------------------------
def test_brainmass_pseudo_fc_views():
    x = batch_for("brainmass")["bold"]
    fc = pearson(x)
    torch.testing.assert_close(fc[0], torch.corrcoef(x[0]), atol=1e-5, rtol=1e-5)
    for view in ("subsample", "crop"):
        model = make("brainmass", view=view)
        v1, v2 = model.views(x, gen(0))
        assert v1.shape == (4, 16, 16)
        torch.testing.assert_close(v1, v1.transpose(1, 2))
        torch.testing.assert_close(torch.diagonal(v1, dim1=1, dim2=2), torch.ones(4, 16))
        assert not torch.allclose(v1, v2)
        assert torch.equal(model.views(x, gen(0))[0], v1)
    x[0, 3] = 1.0  # a constant ROI correlates 0, not NaN
    assert torch.isfinite(pearson(x)).all() and pearson(x)[0, 3, 5] == 0


def test_brainmass_masked_rows_and_their_columns_are_hidden():
    model = make("brainmass").eval()
    fc = pearson(batch_for("brainmass")["bold"])
    rows = torch.zeros(4, 16, dtype=torch.bool)
    rows[:, [2, 9]] = True
    changed = fc.clone()
    changed[:, [2, 9], :] = torch.rand(4, 2, 16)
    changed[:, :, [2, 9]] = changed[:, [2, 9], :].transpose(1, 2)
    a, _ = model.online.tokens(model.masked_input(fc, rows), model.position)
    b, _ = model.online.tokens(model.masked_input(changed, rows), model.position)
    torch.testing.assert_close(a, b)
    leaky = make("brainmass", hide_masked_columns=False).eval()
    a, _ = leaky.online.tokens(leaky.masked_input(fc, rows), leaky.position)
    b, _ = leaky.online.tokens(leaky.masked_input(changed, rows), leaky.position)
    assert not torch.allclose(a, b)


def test_brainmass_terms_and_batchnorm_guard():
    model = make("brainmass")
    terms = model.pretrain_losses(batch_for("brainmass"), generator=gen())
    assert set(terms) == {"byol", "mrm", "mrc", "loss"}
    assert 0 <= float(terms["byol"].detach()) <= 8
    expected = terms["byol"] + 2.0 * terms["mrm"] + 0.1 * terms["mrc"]
    torch.testing.assert_close(terms["loss"], expected)
    with pytest.raises(ValueError, match="at least 2 samples"):
        model.pretrain_loss(batch_for("brainmass", b=1))
    emb = model.embed(batch_for("brainmass"))
    assert emb.subject.shape == (4, 16 * 8) and emb.roi.shape == (4, 16, 16)
