"""ScatterNet: the fixed scattering filters against kymatio and an FFT reference, its cache,
its ONNX export (raw pixels in, normalization and scattering inside the graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeai.data.datasets import load_dataset
from edgeai.errors import ConfigError
from edgeai.models import build_model
from edgeai.models.export import export_onnx
from edgeai.models.scatternet import Scattering2d, filter_bank


def _images(n: int = 24) -> torch.Tensor:
    return torch.from_numpy(load_dataset("mnist").validation.x[:n].copy())


def fft_reference(x: torch.Tensor, J: int = 2, L: int = 8) -> np.ndarray:  # noqa: N803
    """kymatio's algorithm (core/scattering2d.py) in numpy: spectra, periodized subsampling."""
    bank = filter_bank(x.shape[-1], J, L)

    def sub(z: np.ndarray, k: int) -> np.ndarray:
        *lead, h, w = z.shape
        return z.reshape(*lead, k, h // k, k, w // k).mean(axis=(-4, -2))

    def low(spec: np.ndarray, res: int) -> np.ndarray:
        return np.fft.ifft2(sub(spec * bank.phi[res], 2 ** (J - res))).real[..., 1:-1, 1:-1]

    from edgeai.models.scatternet import _periodize  # noqa: PLC0415

    padded = np.pad(x[:, 0].double().numpy(), ((0, 0),) + ((bank.pad, bank.pad),) * 2, "reflect")
    spec = np.fft.fft2(padded)
    out, u1 = [low(spec, 0)], []
    for j, hat in bank.psi:
        u = np.abs(np.fft.ifft2(sub(spec * hat, 2**j)))
        u1.append((j, np.fft.fft2(u)))
        out.append(low(u1[-1][1], j))
    for j1, u_spec in u1:
        for j2, hat in bank.psi:
            if j2 > j1:
                u2 = np.abs(np.fft.ifft2(sub(u_spec * _periodize(hat, j1), 2 ** (j2 - j1))))
                out.append(low(np.fft.fft2(u2), j2))
    return np.stack(out, 1)


def test_the_maps_are_kymatios() -> None:
    kymatio = pytest.importorskip("kymatio.scattering2d.frontend.torch_frontend")
    x = _images()
    ours = Scattering2d(28).conv_forward(x)
    theirs = kymatio.ScatteringTorch2D(J=2, shape=(28, 28), L=8)(x)[:, 0]
    assert ours.shape == theirs.shape == (len(x), 81, 7, 7)
    assert float((ours - theirs).abs().max()) < 1e-4 * float(theirs.abs().max())


def test_the_maps_match_an_fft_reference_and_a_wrong_filter_would_not() -> None:
    x = _images()
    ref = fft_reference(x)
    ours = Scattering2d(28).conv_forward(x).double().numpy()
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() < 1e-4 * scale
    # The test can fail: two neighbouring orientations swapped are far off.
    swapped = ours.copy()
    swapped[:, [1, 2]] = swapped[:, [2, 1]]
    assert np.abs(swapped - ref).max() > 1e-2 * scale


def test_the_cache_returns_what_the_convolutions_compute() -> None:
    x = _images(8)
    module = Scattering2d(28)
    direct = module.conv_forward(x)
    first = module(x)  # computes and memoises
    again = module(torch.cat([x[4:], x[:4]]))  # every image from the memo, in the new order
    assert torch.allclose(first, direct, atol=1e-6)
    assert torch.allclose(again, torch.cat([direct[4:], direct[:4]]), atol=1e-6)
    grad_in = x.clone().requires_grad_(True)
    assert module(grad_in).requires_grad  # a gradient through the filters bypasses the memo


def test_a_bulk_call_is_read_back_from_disk_and_a_torn_entry_is_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeai.models import scatternet  # noqa: PLC0415

    monkeypatch.setenv("EDGEAI_CACHE_DIR", str(tmp_path))
    memo = type(scatternet._CACHE)()
    monkeypatch.setattr(scatternet, "_CACHE", memo)
    x = _images(scatternet._DISK_MIN)
    first = Scattering2d(28)(x)
    assert torch.allclose(first[:20], Scattering2d(28).conv_forward(x[:20]), atol=1e-6)
    (entry,) = (tmp_path / "scattering").iterdir()

    def no_convolution(_: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the maps should have come from the disk cache")

    memo.clear()  # as in a fresh process: only the disk knows the maps
    reader = Scattering2d(28)
    monkeypatch.setattr(reader, "conv_forward", no_convolution)
    assert torch.equal(reader(x), first)

    entry.write_bytes(entry.read_bytes()[:1000])  # torn by a crash mid-write
    memo.clear()
    assert torch.allclose(Scattering2d(28)(x), first, atol=1e-6)
    assert entry.stat().st_size > 1000  # written again, whole


def test_only_the_linear_head_trains_and_the_groupnorm_is_per_image() -> None:
    model = build_model("scatternet", (1, 28, 28), 10, seed=0)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"4.weight", "4.bias"}
    x = _images(4)
    alone = model(x[:1])
    assert torch.allclose(model(x)[:1], alone, atol=1e-5)  # no statistic across the batch
    assert not model.state_dict().keys() - trained  # no filter is a weight to ship or average


def test_onnx_takes_raw_pixels_and_matches_torch(tmp_path: Path) -> None:
    model = build_model("scatternet", (1, 28, 28), 10, seed=0).eval()
    path = export_onnx(model, _images(2), tmp_path / "m.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Conv", "Sqrt"} <= ops
    assert not ops & {"DFT", "STFT"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _images(16)
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (16, 10)
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def test_unsuitable_images_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="grey-scale"):
        build_model("scatternet", (3, 28, 28), 10)
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_model("scatternet", (1, 30, 30), 10)


def test_the_model_runs_under_vmap_as_the_batched_backend_calls_it() -> None:
    from torch.func import functional_call, vmap  # noqa: PLC0415

    model = build_model("scatternet", (1, 28, 28), 10, seed=0)
    params = {k: v.detach().unsqueeze(0).repeat(2, 1, *[1] * (v.dim() - 1))
              for k, v in model.named_parameters()}  # fmt: skip
    x = torch.stack([_images(4), _images(8)[4:]])
    out = vmap(lambda p, xb: functional_call(model, p, (xb,)))(params, x)
    assert torch.allclose(out[1], model(x[1]), atol=1e-5)
