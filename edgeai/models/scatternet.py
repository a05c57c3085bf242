"""ScatterNet: fixed Morlet wavelet scattering features + a linear head (Tramèr & Boneh 2021).

The scattering transform (Mallat; kymatio's ``Scattering2D``, J = 2, L = 8, order 2) is
data-independent, so DP-SGD trains only the head: on MNIST 81 maps of 7x7 = 3,969 features,
39.7k parameters. The filters are kymatio's (same formulas, same padding, same order of
the 81 maps), built here in numpy so nothing needs kymatio at run time.

kymatio multiplies spectra; here every filter is a truncated spatial convolution (circular
padding, stride for the subsampling) followed by a modulus, so the exported ONNX graph is
plain Pad/Conv/Sqrt and takes raw pixels like every other model. The features of an image
never change, so training memoises them per process (keyed by the image's bytes), and a
bulk call (a whole training or evaluation set in chunks) also on disk in ``edgeai.cache``:
a second run of an experiment reads them instead of scattering every image again.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F  # noqa: N812

from edgeai.cache import cache_dir, key_of
from edgeai.plumbing.files import atomic_write

Array = NDArray[np.inexact[Any]]

# Kernel taps below this fraction of a filter's peak are dropped: the features then agree
# with kymatio's (all taps, by FFT) to 1e-4 of the largest coefficient (tested).
_TAP_THRESHOLD = 1e-4
# Memoised features per process: MNIST's 10k images at 3,969 float32 each are 160 MB.
_CACHE_ENTRIES = 12_000
_CHUNK = 256
# A call with at least this many unknown images is memoised on disk as one entry (an
# evaluation set, or the vmap backend's pass over the training set in chunks of 1,000).
# Training minibatches are smaller and drawn at random: they would never be read back.
_DISK_MIN = 500


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> Array:
    """Kymatio's ``gabor_2d`` on a ``size`` x ``size`` grid, periodized over 5x5 tiles."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    out = np.zeros((size, size), np.complex128)
    base = np.arange(size)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.meshgrid(base + ex * size, base + ey * size, indexing="ij")
            arg = -(curv[0, 0] * xx * xx + 2 * curv[0, 1] * xx * yy + curv[1, 1] * yy * yy)
            arg = arg + 1j * xi * (xx * math.cos(theta) + yy * math.sin(theta))
            out += np.exp(arg)
    # kymatio's constant, 3.1415 and all, so the features match it to float precision.
    return out / (2 * 3.1415 * sigma * sigma / slant)


def _morlet_hat(size: int, sigma: float, theta: float, xi: float, slant: float) -> Array:
    """A zero-mean Morlet wavelet's Fourier transform (real: the wavelet is Hermitian)."""
    wave = _gabor(size, sigma, theta, xi, slant)
    envelope = _gabor(size, sigma, theta, 0.0, slant)
    return np.real(np.fft.fft2(wave - wave.sum() / envelope.sum() * envelope))


def _periodize(hat: Array, res: int) -> Array:
    """Kymatio's ``periodize_filter_fft``: keep the low frequencies of a grid 2**res smaller."""
    size = hat.shape[0]
    small = size // 2**res
    if res == 0:
        return hat.copy()
    keep = np.ones(size, bool)
    keep[size // 2 ** (res + 1) : size // 2 ** (res + 1) + size - small] = False
    masked = hat * keep[:, None] * keep[None, :]
    return np.asarray(masked.reshape(2**res, small, 2**res, small).sum(axis=(0, 2)))


@dataclass(frozen=True)
class FilterBank:
    """The Fourier filters of a J-scale, L-angle scattering on a padded square grid."""

    size: int  # the padded grid
    pad: int  # reflection padding on each side of the image
    psi: tuple[tuple[int, Array], ...]  # (j, Fourier filter on the full grid), j-major
    phi: tuple[Array, ...]  # the low-pass filter at resolution 0 .. J-1


@lru_cache(maxsize=4)
def filter_bank(image: int, J: int = 2, L: int = 8) -> FilterBank:  # noqa: N803
    """Kymatio's Morlet filter bank for ``image`` x ``image`` inputs."""
    size = ((image + 2**J) // 2**J + 1) * 2**J
    psi = tuple(
        (
            j,
            _morlet_hat(
                size,
                0.8 * 2**j,
                (int(L - L / 2 - 1) - t) * math.pi / L,
                0.75 * math.pi / 2**j,
                4 / L,
            ),
        )
        for j in range(J)
        for t in range(L)
    )
    phi_hat = np.real(np.fft.fft2(_gabor(size, 0.8 * 2 ** (J - 1), 0.0, 0.0)))
    phi = tuple(_periodize(phi_hat, res) for res in range(J))
    return FilterBank(size, (size - image) // 2, psi, phi)


def _kernel(hat: Array) -> Array:
    """The cross-correlation kernel (2r+1 square, complex) of a circular convolution by ``hat``.

    ``torch.conv2d`` correlates: ``w[k] = h[-k]``; taps under the threshold are cut off.
    """
    h = np.fft.ifft2(hat)
    size = h.shape[0]
    mag = np.abs(np.fft.fftshift(h))
    centre = size // 2
    rows, cols = np.nonzero(mag >= _TAP_THRESHOLD * mag.max())
    r = int(max(np.abs(rows - centre).max(), np.abs(cols - centre).max()))
    if r < (size - 1) // 2:
        offsets = np.arange(-r, r + 1)
        return np.asarray(h[np.ix_((-offsets) % size, (-offsets) % size)])
    # The whole grid: offsets -size/2 .. size/2 count the middle tap twice; halve both ends
    # of an even grid (the circular padding wraps them onto the same pixel).
    r = size // 2
    offsets = np.arange(-r, r + 1)
    weights = np.ones(2 * r + 1)
    if size % 2 == 0:
        weights[0] = weights[-1] = 0.5
    ker = h[np.ix_((-offsets) % size, (-offsets) % size)]
    return np.asarray(ker * weights[:, None] * weights[None, :])


def _conv_weight(hats: list[Array], complex_out: bool) -> torch.Tensor:
    """Stack kernels (zero-padded to one size) as (out, 1, k, k): re, im per filter if complex."""
    kernels = [_kernel(h) for h in hats]
    k = max(len(x) for x in kernels)
    parts: list[Array] = []
    for ker in kernels:
        full = np.pad(ker, (k - len(ker)) // 2)
        parts.extend([full.real, full.imag] if complex_out else [full.real])
    return torch.tensor(np.stack(parts)[:, None], dtype=torch.float32)


@lru_cache(maxsize=4)
def _conv_weights(image: int, J: int, L: int) -> dict[str, torch.Tensor]:  # noqa: N803
    """Every conv kernel of the scattering, by buffer name.

    psi per scale, phi per resolution, and for the second order psi_j2 at the resolution
    of U1 at scale j1 (kymatio's level j1).
    """
    bank = filter_bank(image, J, L)
    weights = {
        f"psi_w{j}": _conv_weight([h for jj, h in bank.psi if jj == j], True) for j in range(J)
    }
    weights |= {f"phi_w{res}": _conv_weight([hat], False) for res, hat in enumerate(bank.phi)}
    for j1 in range(J):
        for j2 in range(j1 + 1, J):
            hats = [_periodize(h, j1) for j, h in bank.psi if j == j2]
            weights[f"psi2_w{j1}_{j2}"] = _conv_weight(hats, True)
    return weights


class Scattering2d(nn.Module):
    """Order-2 scattering of (N, 1, H, H) images: (N, 1 + J·L + L²·J(J-1)/2, H/2^J, H/2^J)."""

    def __init__(self, image: int = 28, J: int = 2, L: int = 8) -> None:  # noqa: N803
        super().__init__()
        if image % 2**J:
            raise ValueError(f"image size {image} must be a multiple of 2**J = {2**J}")
        self.image, self.J, self.L = image, J, L
        bank = filter_bank(image, J, L)  # memoised: every round builds fresh models
        self.size, self.pad = bank.size, bank.pad
        self.maps = 1 + J * L + L * L * J * (J - 1) // 2
        # Shared, never written: the buffers of every instance are the same tensors.
        for name, weight in _conv_weights(image, J, L).items():
            self.register_buffer(name, weight, persistent=False)

    def _buf(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"buffer {name} is not a tensor")
        return value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scattering maps of ``x`` (float32 (N, 1, H, H)), from the cache where known."""
        if (
            x.requires_grad
            or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
            or isinstance(x, torch.fx.Proxy)
            # torch.func transforms (the vmap simulation backend): no bytes to key on.
            or torch._C._functorch.is_functorch_wrapped_tensor(x)
        ):
            return self.conv_forward(x)
        return _cached(self, x)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.pad,) * 4, mode="reflect")

    def _unpad(self, s: torch.Tensor) -> torch.Tensor:
        return s[..., 1:-1, 1:-1]

    # -- the conv form ------------------------------------------------------------------
    def _circ(self, x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
        """Circular convolution of every map of ``x`` by every kernel of ``weight``, strided."""
        n, c, h, w = x.shape
        r = weight.shape[-1] // 2
        flat = x.reshape(n * c, 1, h, w)
        out = F.conv2d(F.pad(flat, (r, r, r, r), mode="circular"), weight, stride=stride)
        return out.reshape(n, c * weight.shape[0], out.shape[-2], out.shape[-1])

    @staticmethod
    def _modulus(z: torch.Tensor) -> torch.Tensor:
        """|re + i im| of interleaved (re, im) channels."""
        n, c, h, w = z.shape
        pairs = z.reshape(n, c // 2, 2, h, w)
        return torch.sqrt((pairs * pairs).sum(2))

    def conv_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scattering by truncated spatial convolutions (exports to ONNX as Pad/Conv/Sqrt)."""
        J = self.J  # noqa: N806
        xp = self._padded(x)
        out = [self._circ(xp, self._buf("phi_w0"), 2**J)]
        first = [self._modulus(self._circ(xp, self._buf(f"psi_w{j}"), 2**j)) for j in range(J)]
        out.extend(self._circ(first[j1], self._buf(f"phi_w{j1}"), 2 ** (J - j1)) for j1 in range(J))
        for j1 in range(J):
            for j2 in range(j1 + 1, J):
                # psi at the resolution of U1 (j1): kymatio keeps level j1 of each filter.
                weight = self._buf(f"psi2_w{j1}_{j2}")
                second = self._modulus(self._circ(first[j1], weight, 2 ** (j2 - j1)))
                out.append(self._circ(second, self._buf(f"phi_w{j2}"), 2 ** (J - j2)))
        return self._unpad(torch.cat(out, 1))


_CACHE: OrderedDict[tuple[int, int, int, bytes], torch.Tensor] = OrderedDict()


def _cached(module: Scattering2d, x: torch.Tensor) -> torch.Tensor:
    """The scattering of each image of ``x``, computed once per process (the filters are fixed)."""
    flat = x.detach().to(torch.float32).contiguous().cpu().numpy()
    keys = [
        (module.image, module.J, module.L, hashlib.blake2b(img.tobytes(), digest_size=16).digest())
        for img in flat
    ]
    missing = [i for i, key in enumerate(keys) if key not in _CACHE]
    if missing:
        rows = x.detach()[missing].cpu()
        fresh = (
            _on_disk(module, rows, [keys[i][-1] for i in missing])
            if len(missing) >= _DISK_MIN
            else _scatter(module, rows)
        )
        _remember(zip([keys[i] for i in missing], fresh, strict=True))
    for key in keys:
        _CACHE.move_to_end(key)
    return torch.stack([_CACHE[key] for key in keys]).to(x.device)


def _scatter(module: Scattering2d, x: torch.Tensor) -> torch.Tensor:
    """The maps of CPU images ``x``, in chunks (a whole evaluation set at once: gigabytes)."""
    with torch.no_grad():
        return torch.cat([module.conv_forward(x[s : s + _CHUNK]) for s in range(0, len(x), _CHUNK)])


def _remember(items: Iterable[tuple[tuple[int, int, int, bytes], torch.Tensor]]) -> None:
    for key, feats in items:
        _CACHE[key] = feats.clone()
        while len(_CACHE) > _CACHE_ENTRIES:
            _CACHE.popitem(last=False)


def _on_disk(module: Scattering2d, x: torch.Tensor, digests: list[bytes]) -> torch.Tensor:
    """The maps of ``x`` from the disk cache, or computed and stored there.

    The entry's name hashes the images and the filters themselves, so a change to either
    (or to the tap threshold) can never read stale maps.
    """
    filters = _filters_digest(module.image, module.J, module.L)
    path = cache_dir("scattering") / f"{key_of(filters, *map(bytes.hex, digests))}.npy"
    try:
        maps = np.load(path, allow_pickle=False)
        if maps.shape[0] == len(x) and maps.dtype == np.float32:
            return torch.from_numpy(maps)
    except (OSError, ValueError):
        pass  # not cached yet, or a torn file: recompute
    fresh = _scatter(module, x)
    buffer = io.BytesIO()
    np.save(buffer, fresh.numpy())
    atomic_write(path, buffer.getvalue(), durable=False)  # a cache: recomputed if lost
    return fresh


@lru_cache(maxsize=8)
def _filters_digest(image: int, J: int, L: int) -> str:  # noqa: N803
    digest = hashlib.sha256(f"{image} {J} {L} {_TAP_THRESHOLD}".encode())
    for name, weight in sorted(_conv_weights(image, J, L).items()):
        digest.update(name.encode())
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()
