"""Seeded FFCV operations for the SSL augmentation set, compiled with numba.

FFCV 1.0.2 ships crop, flip, brightness, contrast and saturation, but no hue, grayscale, Gaussian blur or
solarization, and its random operations draw from numba's unseeded per-thread generator, so two runs with
the same loader seed get different augmentations. Every random operation here is **seeded and stateless**:
its randomness is a pure function of

    (operation seed, the indices of the samples in the batch, the sample's own index)

computed by a counter-based integer hash (no generator state, so results do not depend on thread
scheduling, and Python and numba give bit-identical draws). The batch's index sequence is fixed by FFCV's
traversal order, i.e. by (loader seed, epoch, rank), hence:

- the same loader seed gives identical batches (also after a restart that resumes at epoch e);
- different epochs differ (the permutation differs, so every batch key differs);
- two views differ (each view, and each operation within it, derives its own seed from the loader seed).

(With ``batch_size=1`` the batch key is the sample index alone and a sample would get the same augmentation
every epoch; SSL batches are far larger.)

Design: each augmentation's per-batch loop is a module-level *kernel* (plain Python using ``prange``),
compiled once per process (and cached on disk by numba), shared by both views and by every Loader. The
operation's code handed to FFCV is a one-line shim calling the kernel, declared ``jit_mode=False`` so FFCV
does not compile it again for each Loader (FFCV recompiles every JIT operation per Loader; that is most of
its 35–45 s start-up). Helpers are ``register_jitable``: plain Python when the kernel runs uncompiled
(``Compiler.set_enabled(False)``), inlined when compiled. ``Compiler.num_threads > 1`` selects the
``parallel=True`` build, as ``Compiler.get_iterator()`` selects ``prange``. Operations write into their
preallocated ``dst``. Only the crop decoders are compiled per Loader (they read FFCV's memory manager).

FFCV 1.0.2 cannot schedule a JIT operation after a non-JIT one, so a pipeline is: crop decoder (JIT) →
these augmentations → :class:`NormalizeToTensor` (uint8 → normalised float32 NCHW tensor) → ``ToDevice``.

All augmentations act on uint8 H×W×3 images, before normalisation.
"""

from __future__ import annotations

import math
import types
import zlib
from dataclasses import replace
from typing import Callable

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from . import _ffcv  # noqa: F401  (before any ffcv import)
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


# ------------------------------------------------------------------------------------ counter-based RNG
@register_jitable
def mix32(x):
    """``lowbias32`` integer hash (C. Wellons): a bijection on 32-bit integers with good avalanche.

    Products may exceed 63 bits; numba wraps them and Python does not, but the low 32 bits kept by the mask
    are the same, so compiled and uncompiled results agree.
    """
    x = x & _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


@register_jitable
def combine(a, b):
    """Order-sensitive mix of two 32-bit values (boost's ``hash_combine`` followed by ``mix32``)."""
    return mix32(a ^ ((b + _GOLDEN32 + (a << 6) + (a >> 2)) & _MASK32))


@register_jitable
def batch_key(indices):
    """One 32-bit key for the ordered sample indices of a batch (a function of loader seed, epoch, rank)."""
    key = 0x1234567
    for position in range(len(indices)):
        key = combine(key, int(indices[position]) & _MASK32)
    return key


@register_jitable
def sample_key(op_seed, key_of_batch, index):
    """The key of one sample's randomness in one operation."""
    return combine(combine(op_seed & _MASK32, key_of_batch), int(index) & _MASK32)


@register_jitable
def uniform(key, draw):
    """The ``draw``-th uniform number in [0, 1) of the stream named by ``key``."""
    return mix32(combine(key, draw)) / 4294967296.0


def derive_seed(seed: int, *names: str) -> int:
    """A 32-bit seed for a named component (``derive_seed(seed, "view_a", "jitter")``); stable across runs.

    Uses CRC-32 of the names, not Python's ``hash``, which is salted per process.
    """
    key = int(seed) & _MASK32
    for name in names:
        key = combine(key, zlib.crc32(name.encode()))
    return key


# ----------------------------------------------------------------------------------------- kernel cache
class _Kernel:
    """A batch loop compiled lazily, once per process, in a serial and a parallel build.

    Disk caching (``cache=True``) lets a new process (a Ray worker, a test run) skip most of the compile;
    where no cache directory is writable numba refuses it and we compile without.
    """

    def __init__(self, function: Callable):
        self.function = function
        self._builds: dict[bool, Callable] = {}

    def select(self) -> Callable:
        """The build matching FFCV's compiler settings (the Python function when compilation is off)."""
        if not Compiler.is_enabled:
            return self.function
        parallel = Compiler.num_threads > 1
        if parallel not in self._builds:
            function = self.function
            if parallel:
                # numba's disk cache is keyed by the function's qualified name and signature, not by the
                # ``parallel`` flag: without its own name the parallel build would load the serial one.
                function = types.FunctionType(function.__code__, function.__globals__, function.__name__,
                                              function.__defaults__, function.__closure__)  # fmt: skip
                function.__qualname__ = f"{self.function.__qualname__}_parallel"
            options = dict(fastmath=True, nogil=True, error_model="numpy", parallel=parallel)
            try:
                self._builds[parallel] = njit(cache=True, **options)(function)
            except RuntimeError:  # "cannot cache function ...: no locator available"
                self._builds[parallel] = njit(**options)(function)
        return self._builds[parallel]


def _per_image_kernel(transform: Callable, name: str) -> _Kernel:
    """The batch loop of an augmentation that changes each image on its own: ``transform(image, out, key,
    *parameters)`` writes the changed image into ``out`` for the images drawn with probability ``prob`` (draw 0
    of the stream ``key``; the transform may use the draws after it); the others are copied.

    ``name`` is the loop's own name: numba caches a build on disk under its function's qualified name.
    """

    def batch(images, dst, indices, seed, prob, *parameters):
        key_of_batch = batch_key(indices)
        for i in prange(images.shape[0]):
            key = sample_key(seed, key_of_batch, indices[i])
            if uniform(key, 0) < prob:
                transform(images[i], dst[i], key, *parameters)
            else:
                dst[i] = images[i]
        return dst

    batch.__name__ = batch.__qualname__ = name
    return _Kernel(batch)


def _check_uint8_image_state(previous_state: State, name: str) -> None:
    shape = previous_state.shape
    if previous_state.dtype != np.dtype("uint8") or shape is None or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"{name} needs uint8 H×W×3 images (place it before ToTensor and NormalizeImage); "
                         f"got shape {shape}, dtype {previous_state.dtype}")  # fmt: skip


class _SeededImageOp(Operation):
    """Base of the per-image augmentations: uint8 H×W×3 in, same shape out, seeded, applied with ``prob``."""

    name = "op"
    kernel: _Kernel  # each operation's batch loop

    def __init__(self, prob: float, seed: int):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{type(self).__name__}: prob must be in [0, 1], got {prob}")
        self.prob = float(prob)
        self.seed = int(seed) & _MASK32

    # ``jit_mode=False`` tells FFCV not to compile this operation's code: that code is a one-line Python shim
    # calling the kernel, which is already compiled (and cached across Loaders and processes). Letting FFCV
    # njit the shim as well would cost ~1 s of compile per operation, per view, per Loader, for nothing.
    # FFCV 1.0.2 cannot schedule a JIT operation after a non-JIT one (``Graph.group_operations`` loops
    # forever), so everything after the decoder must be non-JIT: the pipeline ends in NormalizeToTensor.
    def declare_state_and_memory(self, previous_state: State):
        _check_uint8_image_state(previous_state, type(self).__name__)
        return replace(previous_state, jit_mode=False), AllocationQuery(previous_state.shape, np.dtype("uint8"))

    def kernel_parameters(self) -> tuple:
        """The kernel's arguments after ``prob``."""
        return ()

    def generate_code(self) -> Callable:
        """The operation's code: ``kernel(images, dst, indices, seed, prob, *parameters)``."""
        compiled, seed, prob, parameters = self.kernel.select(), self.seed, self.prob, self.kernel_parameters()

        def apply(images, dst, indices):
            return compiled(images, dst, indices, seed, prob, *parameters)

        apply.with_indices = True
        return apply


# ------------------------------------------------------------------------------------------------- flip
@register_jitable
def _mirror(image, out, key):
    width = image.shape[1]
    for y in range(image.shape[0]):
        for x in range(width):
            for c in range(3):
                out[y, x, c] = image[y, width - 1 - x, c]


class SeededHorizontalFlip(_SeededImageOp):
    """Mirror left–right with probability ``prob`` (FFCV's ``RandomHorizontalFlip``, seeded)."""

    kernel = _per_image_kernel(_mirror, "_flip_batch")


# ----------------------------------------------------------------------------------------- colour jitter
@register_jitable
def draw_jitter(key, brightness, contrast, saturation, hue):
    """(order of the four adjustments, brightness, contrast, saturation, hue factors) as torchvision draws.

    Fisher–Yates over draws 1–3 gives the order (0 brightness, 1 contrast, 2 saturation, 3 hue); factors are
    uniform in [max(0, 1−m), 1+m] (hue: [−m, m]) from draws 4–7.
    """
    order = np.arange(4)
    for last in range(3, 0, -1):
        pick = int(uniform(key, 4 - last) * (last + 1))
        order[last], order[pick] = order[pick], order[last]
    low_b = max(0.0, 1.0 - brightness)
    low_c = max(0.0, 1.0 - contrast)
    low_s = max(0.0, 1.0 - saturation)
    factor_b = low_b + (1.0 + brightness - low_b) * uniform(key, 4)
    factor_c = low_c + (1.0 + contrast - low_c) * uniform(key, 5)
    factor_s = low_s + (1.0 + saturation - low_s) * uniform(key, 6)
    factor_h = -hue + 2.0 * hue * uniform(key, 7)
    return order, factor_b, factor_c, factor_s, factor_h


@register_jitable
def _clip255(value):
    return min(max(value, 0.0), 255.0)


@register_jitable
def _to_uint8(value):
    """Round a 0–255 float to the nearest level, halves up: ``int(clip + 0.5)``. The int32 conversion gives
    the same value as ``int`` (int64) here but vectorises (x86 has no packed float64 → int64 before AVX-512)."""
    return np.int32(_clip255(value) + 0.5)


#: Pixels per tile of the colour jitter: three float32 planes of this length stay in the L1 cache.
_JITTER_TILE = 256


# The adjustments work in place on one tile: three float32 planes (red, green, blue) of ``n`` pixels. Planes,
# not interleaved RGB, so each loop runs over contiguous values and numba vectorises it. The formulas and their
# order are those of the per-pixel version before (float64 arithmetic, stored as float32 after each adjustment;
# tests/data/test_ops_speedups.py holds the two to the same output).
@register_jitable
def _shift_hue_planes(red, green, blue, n, shift):
    """RGB (0–255) → HSV, hue += shift (mod 1), → RGB per pixel; torchvision's ``_rgb2hsv``/``_hsv2rgb``.

    Written without early returns and with one division per quotient so that the loop vectorises: both
    branches of each choice are cheap and side-effect free, so LLVM turns them into selects.
    """
    for p in range(n):
        r, g, b = np.float64(red[p]), np.float64(green[p]), np.float64(blue[p])
        maxc = max(r, max(g, b))
        minc = min(r, min(g, b))
        grey = maxc == minc  # hue is undefined and a shift changes nothing: the pixel is kept as it is
        span = maxc - minc if not grey else 1.0
        saturation = span / (maxc if not grey else 1.0)
        if maxc == r:
            numerator, base = g - b, 0.0
        elif maxc == g:
            numerator, base = b - r, 2.0
        else:
            numerator, base = r - g, 4.0
        hue = base + numerator / span
        hue = hue / 6.0 + 1.0 + shift
        hue -= math.floor(hue)  # wrap to [0, 1); cheaper than a float modulo
        sector_f = hue * 6.0
        sector = np.int32(sector_f)
        frac = sector_f - sector
        v = maxc
        low = _clip255(v * (1.0 - saturation))
        falling = _clip255(v * (1.0 - saturation * frac))
        rising = _clip255(v * (1.0 - saturation * (1.0 - frac)))
        # (r, g, b) by sector: 0 (v, rising, low), 1 (falling, v, low), 2 (low, v, rising), 3 (low, falling, v),
        # 4 (rising, low, v), 5 (v, low, falling). Comparisons on the sector itself, which LLVM shares
        # between the channels (a helper called on rotated sectors made the jitter 10 % slower).
        out_r = falling if sector == 1 else (low if sector == 2 or sector == 3 else (rising if sector == 4 else v))
        out_g = rising if sector == 0 else (v if sector <= 2 else (falling if sector == 3 else low))
        out_b = low if sector <= 1 else (rising if sector == 2 else (v if sector <= 4 else falling))
        if grey:
            out_r, out_g, out_b = r, g, b
        red[p] = out_r
        green[p] = out_g
        blue[p] = out_b


@register_jitable
def _jitter_step(kind, red, green, blue, n, factor_b, factor_c, offset_c, factor_s, factor_h):
    """One adjustment of the colour jitter on a tile (0 brightness, 1 contrast, 2 saturation, 3 hue).

    Contrast blends towards the mean luma of the whole image, ``offset_c`` = (1 − factor) · mean.
    """
    if kind == 0:
        for p in range(n):
            red[p] = _clip255(red[p] * factor_b)
        for p in range(n):
            green[p] = _clip255(green[p] * factor_b)
        for p in range(n):
            blue[p] = _clip255(blue[p] * factor_b)
    elif kind == 1:
        for p in range(n):
            red[p] = _clip255(factor_c * red[p] + offset_c)
        for p in range(n):
            green[p] = _clip255(factor_c * green[p] + offset_c)
        for p in range(n):
            blue[p] = _clip255(factor_c * blue[p] + offset_c)
    elif kind == 2:
        for p in range(n):
            gray = (1.0 - factor_s) * (0.2989 * red[p] + 0.587 * green[p] + 0.114 * blue[p])
            red[p] = _clip255(factor_s * red[p] + gray)
            green[p] = _clip255(factor_s * green[p] + gray)
            blue[p] = _clip255(factor_s * blue[p] + gray)
    else:
        _shift_hue_planes(red, green, blue, n, factor_h)


# Converting uint8 ↔ float32 and (de)interleaving the channels in separate loops lets numba vectorise both:
# together, with a stride of 3 bytes, they run several times slower.
@register_jitable
def _load_tile(source, start, n, pixels, red, green, blue):
    """Pixels ``start`` … ``start + n`` of a flat uint8 RGB image into the tile's float32 planes."""
    chunk = source[3 * start : 3 * (start + n)]
    for j in range(3 * n):
        pixels[j] = chunk[j]
    for p in range(n):
        red[p] = pixels[3 * p]
        green[p] = pixels[3 * p + 1]
        blue[p] = pixels[3 * p + 2]


@register_jitable
def _store_tile(red, green, blue, n, pixels, target, start):
    """The tile's planes, rounded, into pixels ``start`` … ``start + n`` of a flat uint8 RGB image."""
    for p in range(n):
        pixels[3 * p] = red[p]
        pixels[3 * p + 1] = green[p]
        pixels[3 * p + 2] = blue[p]
    chunk = target[3 * start : 3 * (start + n)]
    for j in range(3 * n):
        chunk[j] = _to_uint8(pixels[j])


def _jitter_batch(images, dst, indices, seed, prob, brightness, contrast, saturation, hue):
    # Brightness, saturation and hue act on each pixel alone; contrast needs the mean luma of the image as
    # the adjustments before it left it. So: pass 1 runs the adjustments before contrast tile by tile (each
    # tile in L1) and sums the luma; pass 2 applies contrast and the rest. Without contrast, one pass. The
    # float image between the passes goes to a scratch buffer of the thread, tile by tile as three planes
    # (allocated per image: faster than a per-sample buffer from FFCV, which would also hold batches_ahead + 2
    # float copies of every batch).
    key_of_batch = batch_key(indices)
    num_pixels = images.shape[1] * images.shape[2]
    for i in prange(images.shape[0]):
        key = sample_key(seed, key_of_batch, indices[i])
        if uniform(key, 0) < prob:
            order, factor_b, factor_c, factor_s, factor_h = draw_jitter(key, brightness, contrast, saturation, hue)
            steps = np.empty(4, dtype=np.int64)  # the enabled adjustments in their drawn order
            num_steps, split = 0, -1  # split: the position of contrast among them (-1: none)
            for step in range(4):
                kind = order[step]
                if ((kind == 0 and brightness > 0) or (kind == 1 and contrast > 0)
                        or (kind == 2 and saturation > 0) or (kind == 3 and hue > 0)):  # fmt: skip
                    if kind == 1:
                        split = num_steps
                    steps[num_steps] = kind
                    num_steps += 1
            before = num_steps if split < 0 else split
            source = images[i].reshape(num_pixels * 3)
            target = dst[i].reshape(num_pixels * 3)
            scratch = np.empty(num_pixels * 3 if split > 0 else 0, dtype=np.float32)  # between the passes
            pixels = np.empty(3 * _JITTER_TILE, dtype=np.float32)  # one tile, interleaved
            tile = np.empty((3, _JITTER_TILE), dtype=np.float32)  # and as planes
            red, green, blue = tile[0], tile[1], tile[2]
            total = 0.0
            for start in range(0, num_pixels, _JITTER_TILE):
                n = min(_JITTER_TILE, num_pixels - start)
                _load_tile(source, start, n, pixels, red, green, blue)
                for s in range(before):
                    _jitter_step(steps[s], red, green, blue, n, factor_b, factor_c, 0.0, factor_s, factor_h)
                if split < 0:
                    _store_tile(red, green, blue, n, pixels, target, start)
                    continue
                for p in range(n):
                    total += 0.2989 * red[p] + 0.587 * green[p] + 0.114 * blue[p]
                if before > 0:
                    stored = scratch[3 * start : 3 * (start + n)]
                    for p in range(n):
                        stored[p] = red[p]
                        stored[n + p] = green[p]
                        stored[2 * n + p] = blue[p]
            if split >= 0:
                offset_c = (1.0 - factor_c) * total / num_pixels  # blend towards the mean luma
                for start in range(0, num_pixels, _JITTER_TILE):
                    n = min(_JITTER_TILE, num_pixels - start)
                    if before > 0:
                        stored = scratch[3 * start : 3 * (start + n)]
                        for p in range(n):
                            red[p] = stored[p]
                            green[p] = stored[n + p]
                            blue[p] = stored[2 * n + p]
                    else:
                        _load_tile(source, start, n, pixels, red, green, blue)
                    for s in range(split, num_steps):
                        _jitter_step(steps[s], red, green, blue, n, factor_b, factor_c, offset_c, factor_s, factor_h)
                    _store_tile(red, green, blue, n, pixels, target, start)
        else:
            dst[i] = images[i]
    return dst


_JITTER = _Kernel(_jitter_batch)


class ColorJitter(_SeededImageOp):
    """torchvision's ``RandomApply([ColorJitter(b, c, s, h)], p)``: with probability ``prob``, brightness,
    contrast, saturation and hue adjustments in a random order, each factor drawn per image.

    Computed in float32 on 0–255 values, clipped after each step and rounded once at the end (torchvision
    truncates to uint8 between steps; that only loses precision). A magnitude of 0 disables that step.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, prob: float, seed: int):
        super().__init__(prob, seed)
        if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
            raise ValueError("ColorJitter: brightness, contrast, saturation must be >= 0 and hue in [0, 0.5]")
        self.brightness, self.contrast, self.saturation, self.hue = map(float, (brightness, contrast, saturation, hue))

    kernel = _JITTER

    def kernel_parameters(self) -> tuple:
        return self.brightness, self.contrast, self.saturation, self.hue


# -------------------------------------------------------------------------------------------- grayscale
@register_jitable
def _luma(image, out, key):
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            gray = 0.2989 * image[y, x, 0] + 0.587 * image[y, x, 1] + 0.114 * image[y, x, 2]
            value = int(_clip255(gray) + 0.5)
            out[y, x, 0] = value
            out[y, x, 1] = value
            out[y, x, 2] = value


class RandomGrayscale(_SeededImageOp):
    """With probability ``prob``, replace each pixel by its luma (0.2989 R + 0.587 G + 0.114 B) in all channels."""

    kernel = _per_image_kernel(_luma, "_grayscale_batch")


# ------------------------------------------------------------------------------------------------- blur
@register_jitable
def blur_radius(sigma, max_radius, height, width):
    """Kernel half-width: ceil(3σ) (99.7 % of the mass), at most ``max_radius`` and smaller than the image."""
    return max(0, min(int(math.ceil(3.0 * sigma)), max_radius, height - 1, width - 1))


@register_jitable
def _reflect(position, size):
    """Mirror an out-of-range index without repeating the edge (numpy's / torch's ``reflect`` padding)."""
    if position < 0:
        return -position
    if position >= size:
        return 2 * size - 2 - position
    return position


def _blur_batch(images, dst, indices, seed, prob, sigma_low, sigma_high, max_radius):
    key_of_batch = batch_key(indices)
    height, width = images.shape[1], images.shape[2]
    row_len = width * 3
    for i in prange(images.shape[0]):
        key = sample_key(seed, key_of_batch, indices[i])
        if uniform(key, 0) < prob:
            sigma = sigma_low + (sigma_high - sigma_low) * uniform(key, 1)
            radius = blur_radius(sigma, max_radius, height, width)
            taps = 2 * radius + 1
            weights = np.empty(taps, dtype=np.float32)
            total = 0.0
            for k in range(taps):
                weights[k] = math.exp(-((k - radius) ** 2) / (2.0 * sigma * sigma))
                total += weights[k]
            for k in range(taps):
                weights[k] /= total
            # Both passes run their innermost loop over a contiguous row of W×3 values, which numba
            # vectorises. The horizontal pass of row y goes into slot y % taps of a ring of ``taps`` rows
            # (kept in cache, instead of a whole float image); the vertical pass of row y − radius follows
            # as soon as the rows it reads are there. Its reflected rows at the top and bottom edge are
            # always among the last ``taps`` rows computed.
            padded = np.empty((width + 2 * radius) * 3, dtype=np.float32)
            ring = np.empty((taps, row_len), dtype=np.float32)
            accumulator = np.empty(row_len, dtype=np.float32)
            source = images[i].reshape(height, row_len)
            target = dst[i].reshape(height, row_len)
            edge = radius * 3
            for y in range(height + radius):
                if y < height:  # horizontal pass of row y, its reflected border materialised once
                    row = source[y]
                    for j in range(row_len):
                        padded[edge + j] = row[j]
                    for x in range(radius):
                        left, right = _reflect(x - radius, width), _reflect(width + x, width)
                        for c in range(3):
                            padded[x * 3 + c] = row[left * 3 + c]
                            padded[edge + row_len + x * 3 + c] = row[right * 3 + c]
                    out_row = ring[y % taps]
                    out_row[:] = 0.0
                    for k in range(taps):
                        weight = weights[k]
                        offset = k * 3
                        for j in range(row_len):
                            out_row[j] += weight * padded[offset + j]
                out_y = y - radius
                if out_y >= 0:  # vertical pass of row out_y into dst
                    accumulator[:] = 0.0
                    for k in range(taps):
                        weight = weights[k]
                        above = ring[_reflect(out_y + k - radius, height) % taps]
                        for j in range(row_len):
                            accumulator[j] += weight * above[j]
                    out = target[out_y]
                    for j in range(row_len):
                        out[j] = _to_uint8(accumulator[j])
        else:
            dst[i] = images[i]
    return dst


_BLUR = _Kernel(_blur_batch)


class GaussianBlur(_SeededImageOp):
    """With probability ``prob``, a separable Gaussian blur with σ uniform in ``sigma`` (reflect padding).

    The kernel spans ±ceil(3σ) pixels (capped by ``max_radius``, default ceil(3·σ_max)), like PIL's
    ``GaussianBlur(radius=σ)`` used by the BYOL/VICReg recipes, rather than torchvision's fixed size.
    """

    def __init__(self, sigma: tuple[float, float], prob: float, seed: int, max_radius: int | None = None):
        super().__init__(prob, seed)
        low, high = float(sigma[0]), float(sigma[1])
        if not 0 < low <= high:
            raise ValueError(f"GaussianBlur: sigma must satisfy 0 < min <= max, got {sigma}")
        self.sigma = (low, high)
        self.max_radius = int(max_radius if max_radius is not None else math.ceil(3 * high))

    kernel = _BLUR

    def kernel_parameters(self) -> tuple:
        return self.sigma[0], self.sigma[1], self.max_radius


# ------------------------------------------------------------------------------------------- solarize
@register_jitable
def _invert_above(image, out, key, threshold):
    size = image.size
    source = image.reshape(size)  # one flat loop over H×W×3 values, which numba vectorises
    target = out.reshape(size)
    for j in range(size):
        value = source[j]
        target[j] = 255 - value if value >= threshold else value


class RandomSolarize(_SeededImageOp):
    """With probability ``prob``, invert every value ``>= threshold`` (torchvision's ``RandomSolarize``)."""

    def __init__(self, threshold: int, prob: float, seed: int):
        super().__init__(prob, seed)
        if not 0 <= threshold <= 256:
            raise ValueError(f"RandomSolarize: threshold must be in [0, 256], got {threshold}")
        self.threshold = int(threshold)

    kernel = _per_image_kernel(_invert_above, "_solarize_batch")

    def kernel_parameters(self) -> tuple:
        return (self.threshold,)


# ------------------------------------------------------------------------------ normalise to a tensor
def _normalize_batch(images, dst, mean, inv_std):
    for i in prange(images.shape[0]):
        for c in range(3):
            for y in range(images.shape[1]):
                for x in range(images.shape[2]):
                    dst[i, c, y, x] = (images[i, y, x, c] - mean[c]) * inv_std[c]
    return dst


_NORMALIZE = _Kernel(_normalize_batch)


class NormalizeToTensor(Operation):
    """uint8 N×H×W×3 → float32 N×C×H×W torch tensor, ``(x − mean) / std`` per channel, in one compiled pass.

    Replaces FFCV's ``NormalizeImage → ToTensor → ToTorchImage(channels_last=False)`` (two passes and a copy).
    ``mean``/``std`` are in the 0–1 scale of ``DataConfig``. The result is contiguous and shares memory with
    FFCV's output buffer.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if mean.shape != (3,) or std.shape != (3,) or (std <= 0).any():
            raise ValueError(f"NormalizeToTensor: mean and std need 3 values, std > 0; got {mean}, {std}")
        self.mean = (mean * 255.0).astype(np.float32)
        self.inv_std = (1.0 / (std * 255.0)).astype(np.float32)

    def declare_state_and_memory(self, previous_state: State):
        import torch

        _check_uint8_image_state(previous_state, "NormalizeToTensor")
        height, width, channels = previous_state.shape
        # jit_mode=False: the shim below returns a torch tensor; the kernel it calls is compiled already.
        next_state = replace(previous_state, jit_mode=False, shape=(channels, height, width), dtype=torch.float32)
        return next_state, AllocationQuery((channels, height, width), np.dtype("float32"))

    def generate_code(self) -> Callable:
        import torch

        kernel, mean, inv_std = _NORMALIZE.select(), self.mean, self.inv_std

        def normalize_to_tensor(images, dst):
            return torch.from_numpy(kernel(images, dst, mean, inv_std)[: images.shape[0]])

        return normalize_to_tensor


# --------------------------------------------------------------------------------- random resized crop
@register_jitable
def random_crop_box(key, height, width, scale_low, scale_high, log_ratio_low, log_ratio_high):
    """torchvision's ``RandomResizedCrop.get_params``: (top, left, crop height, crop width).

    Up to 10 tries of an area fraction in ``scale`` and a log-uniform aspect ratio; then a centre crop with
    the ratio clamped to the allowed range. Rounds half up (the same in Python and numba).
    """
    area = float(height * width)
    for attempt in range(10):
        target_area = area * (scale_low + (scale_high - scale_low) * uniform(key, 4 * attempt))
        aspect = math.exp(log_ratio_low + (log_ratio_high - log_ratio_low) * uniform(key, 4 * attempt + 1))
        crop_w = int(math.floor(math.sqrt(target_area * aspect) + 0.5))
        crop_h = int(math.floor(math.sqrt(target_area / aspect) + 0.5))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(uniform(key, 4 * attempt + 2) * (height - crop_h + 1))
            left = int(uniform(key, 4 * attempt + 3) * (width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    ratio_low, ratio_high = math.exp(log_ratio_low), math.exp(log_ratio_high)
    if in_ratio < ratio_low:
        crop_w = width
        crop_h = int(math.floor(crop_w / ratio_low + 0.5))
    elif in_ratio > ratio_high:
        crop_h = height
        crop_w = int(math.floor(crop_h * ratio_high + 0.5))
    else:
        crop_w = width
        crop_h = height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


@register_jitable
def center_crop_box(height, width):
    """The largest centred square: (top, left, side, side) (FFCV's centre crop with ratio 1)."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


class CropResizeDecoder(ResizedCropRGBImageDecoder):
    """Decode, crop and resize (OpenCV area interpolation) in one pass, like FFCV's crop decoders.

    ``random=True``: torchvision's random resized crop with ``scale``/``ratio``, the box drawn by
    :func:`random_crop_box` keyed by (seed, batch, sample index) instead of numba's unseeded generator.
    ``random=False``: the centred square (evaluation). Supports raw and JPEG storage and varying sizes.
    """

    def __init__(self, output_size: tuple[int, int], *, random: bool, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 seed: int = 0):  # fmt: skip
        super().__init__(output_size)
        if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop scale/ratio must satisfy 0 < min <= max, got {scale}, {ratio}")
        self.random = bool(random)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.seed = int(seed) & _MASK32

    @property
    def get_crop_generator(self):  # required by the abstract base; generate_code below does not use it
        return random_crop_box if self.random else center_crop_box

    def generate_code(self) -> Callable:
        jpg_mode = 0  # ffcv.fields.rgb_image.IMAGE_MODES['jpg']
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        # Fresh dispatchers per generate_code, and the decode body below, follow FFCV's own decoder: numba
        # 0.68 mis-handles a dispatcher of these ctypes wrappers shared between Loaders (a KeyError while
        # typing the second Loader's decoder).
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        random, seed = self.random, self.seed
        scale_low, scale_high = self.scale
        log_ratio_low, log_ratio_high = math.log(self.ratio[0]), math.log(self.ratio[1])

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            key_of_batch = batch_key(batch_indices)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg_mode:
                    temp_buffer = temp_storage[dst_ix]
                    imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                    selected_size = 3 * height * width
                    temp_buffer = temp_buffer.reshape(-1)[:selected_size]
                    temp_buffer = temp_buffer.reshape(height, width, 3)
                else:
                    temp_buffer = image_data.reshape(height, width, 3)
                if random:
                    key = sample_key(seed, key_of_batch, source_ix)
                    top, left, crop_h, crop_w = random_crop_box(
                        key, int(height), int(width), scale_low, scale_high, log_ratio_low, log_ratio_high
                    )
                else:
                    top, left, crop_h, crop_w = center_crop_box(int(height), int(width))
                resize_crop_c(temp_buffer, top, top + crop_h, left, left + crop_w, destination[dst_ix])
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode


class SeededRandomResizedCropDecoder(CropResizeDecoder):
    """FFCV's ``RandomResizedCropRGBImageDecoder`` (torchvision's ``scale``/``ratio``) with seeded crops."""

    def __init__(self, output_size: tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed: int = 0):
        super().__init__(output_size, random=True, scale=scale, ratio=ratio, seed=seed)


class CenterCropDecoder(CropResizeDecoder):
    """FFCV's ``CenterCropRGBImageDecoder(ratio=1)``: the centred square, resized (the evaluation view)."""

    def __init__(self, output_size: tuple[int, int]):
        super().__init__(output_size, random=False)
