"""Every model option in configs/model/*.yaml keeps the contract of the capabilities it declares, without training.

The options are read from configs/ (a new model YAML is checked without an edit here), and a user's own model
(tests/fixtures/byo) is checked the same way. Per model: samples of the data's shape, dtype and range, the same
for the same generator; a finite log_prob of the data for :class:`Likelihood`; samples of requested classes for
:class:`Conditional`; interpolation paths for :class:`Latent`; the state round trip; parameter groups that are the
phases of the model's own objective, each with parameters; the EMA target a submodule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_config
from gentrain.build import build, build_model, build_objective, config_options
from gentrain.models.base import Conditional, GenerativeModel, Latent, Likelihood
from gentrain.shared import to_model_space

BYO = Path(__file__).resolve().parents[1] / "fixtures" / "byo"
CASES = [([f"model={name}"], name) for name, _ in config_options("model")] + [
    (["model=ddpm", "model.num_classes=10"], "ddpm-conditional"),
    ([f"hydra.searchpath=[file://{BYO / 'conf'}]", "model=lowrank"], "byo-lowrank"),
]


def build_tiny(overrides: list[str]) -> tuple[GenerativeModel, object, torch.Tensor, torch.Tensor | None]:
    cfg = make_config([*overrides, "dataset=digits", "debug=tiny", "device=cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    objective = build_objective(cfg, model)
    split = build(cfg.dataset, "dataset").load("train")
    return model, objective, to_model_space(split.x[:8]), None if split.y is None else split.y[:8]


@pytest.mark.parametrize("overrides", [c for c, _ in CASES], ids=[i for _, i in CASES])
def test_every_model_keeps_the_contract_of_its_capabilities(overrides, monkeypatch):
    monkeypatch.syspath_prepend(str(BYO))
    model, objective, x, y = build_tiny(overrides)
    assert isinstance(model, GenerativeModel)
    shape = tuple(x.shape[1:])

    # parameter groups: exactly the phases of its objective, each a module with trainable parameters
    groups = model.param_groups()
    assert {p.name for p in objective.phases} == set(groups)
    assert all(any(p.requires_grad for p in m.parameters()) for m in groups.values())
    target = model.ema_target()
    assert target is None or isinstance(getattr(model, target), torch.nn.Module)

    with torch.no_grad():
        # samples: the data's shape, float32, finite, in [-1, 1] for images; the same for the same generator
        a = model.sample(4, generator=torch.Generator().manual_seed(1))
        b = model.sample(4, generator=torch.Generator().manual_seed(1))
        assert a.shape == (4, *shape) and a.dtype == torch.float32 and torch.isfinite(a).all()
        assert float(a.min()) >= -1 - 1e-6 and float(a.max()) <= 1 + 1e-6
        assert torch.equal(a, b)
        grid, nrow = model.sample_grid(8, generator=torch.Generator().manual_seed(2))
        assert tuple(grid.shape[1:]) == shape and (nrow is None or nrow >= 1)

        if isinstance(model, Likelihood):
            log_p = model.log_prob(x)
            assert log_p.shape == (8,) and torch.isfinite(log_p).all()
            assert model.log_likelihood(x).shape == (8,) and isinstance(model.likelihood_kind, str) and model.likelihood_kind
        if isinstance(model, Conditional):
            assert isinstance(model.num_classes, int) and model.num_classes >= 1
            labels = torch.arange(4) % model.num_classes
            assert model.sample_of_labels(labels, generator=torch.Generator().manual_seed(3)).shape == (4, *shape)
        else:
            assert model.sample_with_labels(2)[1] is None
        if isinstance(model, Latent):
            path = model.interpolate(2, 3, spherical=True, generator=torch.Generator().manual_seed(4))
            assert path is None or path.shape == (6, *shape)

    # the state round trip: a model built from the same config with the loaded state samples the same
    twin, _, _, _ = build_tiny(overrides)
    torch.manual_seed(123)  # other initial weights
    twin.load_state_dict(model.state_dict())  # after log_prob: data-dependent initialisation (Glow's ActNorm) included
    with torch.no_grad():
        ours = model.sample(4, generator=torch.Generator().manual_seed(1))
        assert torch.equal(twin.eval().sample(4, generator=torch.Generator().manual_seed(1)), ours)


def test_the_capability_types_are_abstract():
    """A class that declares a capability and lacks its method cannot be built (the contract is checked at once)."""
    class NoLogProb(GenerativeModel, Likelihood):
        def param_groups(self):
            return {"main": self}

    with pytest.raises(TypeError, match="log_prob"):
        NoLogProb()
