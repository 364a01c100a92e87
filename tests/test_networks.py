"""Score networks: shapes, time embedding, class conditioning, size, gradients, seeded init."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import diffkit
from diffkit import ScoreModel
from diffkit.core.errors import OptionError, PluginLoadWarning
from diffkit.losses import l_simple
from diffkit.nn import LabelEmbedding, MLPScoreNet, UNet, sinusoidal_embedding


@pytest.fixture(scope="module")
def registry() -> diffkit.Registry:
    """A fresh registry with the built-in plugins."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        return diffkit.build_registry()


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_sinusoidal_embedding_properties():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    emb = sinusoidal_embedding(t, 64)
    assert emb.shape == (11, 64) and emb.dtype == torch.float64
    torch.testing.assert_close(emb.norm(dim=1), torch.full((11,), math.sqrt(32.0), dtype=torch.float64))
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(32), torch.ones(32)]).double())  # t = 0
    assert float(torch.cdist(emb, emb).add(torch.eye(11) * 10).min()) > 0.1  # distinct times apart
    assert sinusoidal_embedding(t.float(), 16).dtype == torch.float32
    with pytest.raises(ValueError):
        sinusoidal_embedding(t, 7)


@pytest.mark.parametrize("shape", [(2,), (5,), (1, 8, 8)])
def test_mlp_shapes(shape):
    net = MLPScoreNet(shape, hidden=32, depth=2)
    x = torch.randn(3, *shape)
    assert net(x, torch.rand(3), None).shape == x.shape
    wide = MLPScoreNet(shape, hidden=32, depth=2, learn_variance=True)
    assert wide(x, torch.rand(3), None).shape == (3, 2 * shape[0], *shape[1:])


@pytest.mark.parametrize(
    ("shape", "mults", "attention"),
    [((1, 8, 8), (1, 2), True), ((3, 16, 16), (1, 2, 2), False), ((2, 12, 8), (1, 2), True)],
)
def test_unet_shapes(shape, mults, attention):
    net = UNet(shape, channels=16, channel_mults=mults, attention=attention)
    x = torch.randn(2, *shape)
    assert net(x, torch.rand(2), None).shape == x.shape
    wide = UNet(shape, channels=16, channel_mults=mults, attention=attention, learn_variance=True)
    assert wide(x, torch.rand(2), None).shape == (2, 2 * shape[0], *shape[1:])


def test_unet_rejects_bad_shapes():
    with pytest.raises(ValueError):
        UNet((1, 9, 9), channel_mults=(1, 2))
    with pytest.raises(ValueError):
        UNet((64,))
    net = UNet((1, 8, 8), channels=8)
    with pytest.raises(ValueError):
        net(torch.randn(2, 1, 4, 4), torch.rand(2), None)


@pytest.mark.parametrize(
    "make", [lambda: MLPScoreNet((4,), num_classes=3), lambda: UNet((1, 8, 8), num_classes=3)]
)
def test_class_conditioning_and_null_class(make):
    torch.manual_seed(0)
    net = make()
    shape = (4,) if isinstance(net, MLPScoreNet) else (1, 8, 8)
    x, t = torch.randn(4, *shape), torch.rand(4)
    null = torch.full((4,), 3)
    torch.testing.assert_close(net(x, t, None), net(x, t, null))  # None is the null class
    a, b = net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(a, b) and not torch.allclose(a, net(x, t, None))
    with pytest.raises(ValueError):
        net(x, t, torch.full((4,), 4))  # beyond the null class
    with pytest.raises(TypeError):
        net(x, t, torch.zeros(4))  # not integer labels


def test_unconditional_network_refuses_labels():
    net = MLPScoreNet((2,))
    with pytest.raises(ValueError):
        net(torch.randn(2, 2), torch.rand(2), torch.zeros(2, dtype=torch.long))
    assert isinstance(LabelEmbedding(10, 8).null_label, int)


def test_time_changes_output_and_sizes_are_small(registry):
    mlp = registry.build("network", "mlp", {}, (2,))
    unet = registry.build("network", "unet", {"channel-mults": "1,2"}, (1, 8, 8))
    assert _params(mlp) < 250_000 and _params(unet) < 1_000_000
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(unet(x, torch.zeros(2), None), unet(x, torch.ones(2), None))
    with pytest.raises(OptionError):
        registry.build("network", "unet", {"channel_mults": "1,x"}, (1, 8, 8))
    with pytest.raises(OptionError):
        registry.build("network", "mlp", {"width": 3}, (2,))


@pytest.mark.parametrize("name", ["mlp", "unet"])
def test_gradients_reach_every_parameter_through_a_loss(registry, name):
    shape = (2,) if name == "mlp" else (1, 8, 8)
    options = {} if name == "mlp" else {"channels": 8, "num_classes": 2}
    net = registry.build("network", name, options, shape)
    process = registry.build("process", "vp", {})
    model = ScoreModel(net, kind="eps", process=process, data_shape=shape)
    x0 = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]) if name == "unet" else None
    l_simple(model, x0, generator=torch.Generator().manual_seed(1), cond=cond).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


@pytest.mark.parametrize("name", ["mlp", "unet"])
def test_seeded_init_is_deterministic_and_leaves_global_rng_alone(registry, name):
    shape = (2,) if name == "mlp" else (1, 8, 8)

    def build() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            return registry.build("network", name, {}, shape)

    before = torch.random.get_rng_state()
    first, second = build(), build()
    assert torch.equal(before, torch.random.get_rng_state())
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)


def test_float64_networks_follow_input_dtype():
    net = UNet((1, 8, 8), channels=8).double()
    out = net(torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.rand(2, dtype=torch.float64), None)
    assert out.dtype == torch.float64
