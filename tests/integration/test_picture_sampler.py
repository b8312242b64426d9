"""A cheaper sampler for the sample pictures alone (``sampler.pictures``): a tiny DDPM run draws its grids,
interpolations and trajectory with it while its evaluation keeps the run's ancestral sampler, and the start line and
the report say so; the default (DDIM-50 under sampler=ddpm), where it does not apply, and bad values."""

from __future__ import annotations

import json

import pytest

from conftest import make_config, quiet_console
from gentrain.build import build_model
from gentrain.engine.progress import open_phases
from gentrain.errors import GentrainError
from gentrain.families.diffusion.model import DiffusionModel, SamplerSpec
from test_diffusion import SMALL, ddpm_overrides
from test_metrics import TinyExtractor


def test_pictures_draw_with_the_cheap_sampler_and_evaluation_with_the_runs(tmp_path, monkeypatch):
    from gentrain.tasks import train

    monkeypatch.setattr("gentrain.tasks.common.inception_extractor", lambda es, device: TinyExtractor())
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    drawn: list[tuple[str, str, int]] = []  # (what asked: pictures or an evaluation, sampler, denoiser passes per sample)
    run_sampler = DiffusionModel.run_sampler

    def counting(self, x, y=None, sampler=None, generator=None, keep=None):
        out = run_sampler(self, x, y, sampler, generator, keep)
        s = sampler or self.sampler
        # evaluation draws inside its "sampling and features" phase; pictures inside none
        drawn.append(("eval" if open_phases() else "pictures", s.name, self.timesteps if s.name == "ddpm" else s.steps))
        return out

    monkeypatch.setattr(DiffusionModel, "run_sampler", counting)
    out = quiet_console()
    overrides = ddpm_overrides("digits", steps=2, extra=[
        "sampler.pictures.steps=2", "eval.metrics=[fid16]", "eval.batch_size=16", "eval.every=0", "logger.tensorboard=false",
    ])
    report = train(make_config(overrides), run_dir=tmp_path / "run", console=out)
    pictures = {d for d in drawn if d[0] == "pictures"}
    evaluation = {d for d in drawn if d[0] == "eval"}
    assert pictures == {("pictures", "ddim", 2)}, drawn  # grid, interpolations, trajectory: 2 passes, not T = 10
    assert evaluation == {("eval", "ddpm", 10)}, drawn  # the FID's samples: the run's sampler, all T steps
    said = "ddim (2 steps, eta 0) (sampler.pictures; evaluation keeps the run's ddpm (ancestral, 10 steps))"
    assert f"sample pictures: drawn with {said}" in " ".join(out.file.getvalue().split())  # type: ignore[attr-defined]  # (wrapped at 120)
    assert report["samples_sampler"] == said and json.loads((tmp_path / "run" / "report.json").read_text())["samples_sampler"] == said
    assert f"At fixed noise, step 2, drawn with {said}:" in (tmp_path / "run" / "report.md").read_text()
    assert report["metrics"] and report["evaluation"][0]["name"] == "fid16"


def test_the_default_pictures_sampler_where_it_applies():
    model = build_model(make_config(["model=ddpm", "dataset=digits", *SMALL]))  # T = 1000, sampler=ddpm
    assert model.sampler == SamplerSpec("ddpm", None, 0.0, 0.0, SamplerSpec("ddim", 50, 0.0, 0.0))
    assert model.picture_sampler() == "ddim (50 steps, eta 0) (sampler.pictures; evaluation keeps the run's ddpm (ancestral, 1000 steps))"
    with model.drawing_pictures():
        assert model.sampler == SamplerSpec("ddim", 50, 0.0, 0.0)
    assert model.sampler.name == "ddpm"
    # 50 steps are no cheaper than T = 10; sampler=ddim draws its pictures itself; null: the run's sampler
    for extra in (["objective.timesteps=10"], ["sampler=ddim"], ["sampler.pictures=null"]):
        model = build_model(make_config(["model=ddpm", "dataset=digits", *SMALL, *extra]))
        assert model.sampler.pictures is None and model.picture_sampler() is None, extra
        with model.drawing_pictures():
            assert model.sampler.pictures is None
    # the pictures keep the run's guidance
    guided = ["model.num_classes=10", "sampler.guidance=2.0"]
    assert build_model(make_config(["model=ddpm", "dataset=digits", *SMALL, *guided])).sampler.pictures == SamplerSpec("ddim", 50, 0.0, 2.0)


@pytest.mark.parametrize("extra, message", [
    (["objective.timesteps=10", "sampler.pictures.steps=20"], "sampler.pictures.steps=20 is more than the model's objective.timesteps=10"),
    (["sampler.pictures.steps=0"], "sampler.pictures: sampler.steps must be a positive integer"),
    (["+sampler.pictures.guidance=1"], "sampler.pictures takes name, steps and eta"),
    (["sampler.pictures=3"], "sampler.pictures takes name, steps and eta"),
])
def test_a_bad_pictures_sampler_is_one_line(extra, message):
    with pytest.raises(GentrainError, match=message) as e:
        build_model(make_config(["model=ddpm", "dataset=digits", *SMALL, *extra]))
    assert "\n" not in str(e.value)
