"""The colour jitter, grayscale, Gaussian blur and solarize kernels of ``adadim_dist/data/ops.py`` as they were
before the 224 px speed-ups (issue 30), kept verbatim as the reference that ``test_ops_speedups.py`` holds the
current kernels to. Helpers unchanged since (the counter-based draws, clipping, the blur radius and reflection)
are imported from ``ops``.
"""

# ruff: noqa
from __future__ import annotations

import math

import numpy as np
from numba import prange
from numba.extending import register_jitable

from adadim_dist.data.ops import _Kernel, _clip255, _reflect, batch_key, blur_radius, draw_jitter, sample_key, uniform


# ----------------------------------------------------------------------------------------- colour jitter
# The adjustments work in place on a float32 (pixels, 3) image; flat loops let numba vectorise them.
@register_jitable
def _adjust_brightness(pixels, factor):
    for p in range(pixels.shape[0]):
        for c in range(3):
            pixels[p, c] = _clip255(pixels[p, c] * factor)


@register_jitable
def _adjust_contrast(pixels, factor):
    total = 0.0
    for p in range(pixels.shape[0]):
        total += 0.2989 * pixels[p, 0] + 0.587 * pixels[p, 1] + 0.114 * pixels[p, 2]
    offset = (1.0 - factor) * total / pixels.shape[0]  # blend towards the mean luma
    for p in range(pixels.shape[0]):
        for c in range(3):
            pixels[p, c] = _clip255(factor * pixels[p, c] + offset)


@register_jitable
def _adjust_saturation(pixels, factor):
    for p in range(pixels.shape[0]):
        gray = (1.0 - factor) * (0.2989 * pixels[p, 0] + 0.587 * pixels[p, 1] + 0.114 * pixels[p, 2])
        for c in range(3):
            pixels[p, c] = _clip255(factor * pixels[p, c] + gray)


@register_jitable
def _shift_hue_pixel(r, g, b, shift):
    """RGB (0–255) → HSV, hue += shift (mod 1), → RGB; torchvision's ``_rgb2hsv``/``_hsv2rgb`` formulas."""
    r, g, b = float(r), float(g), float(b)
    maxc = max(r, max(g, b))
    minc = min(r, min(g, b))
    if maxc == minc:  # grey: hue is undefined and a shift changes nothing
        return r, g, b
    span = maxc - minc
    saturation = span / maxc
    if maxc == r:
        hue = (g - b) / span
    elif maxc == g:
        hue = 2.0 + (b - r) / span
    else:
        hue = 4.0 + (r - g) / span
    hue = hue / 6.0 + 1.0 + shift
    hue -= math.floor(hue)  # wrap to [0, 1); cheaper than a float modulo
    sector_f = hue * 6.0
    sector = int(sector_f)
    frac = sector_f - sector
    v = maxc
    p = _clip255(v * (1.0 - saturation))
    q = _clip255(v * (1.0 - saturation * frac))
    t = _clip255(v * (1.0 - saturation * (1.0 - frac)))
    if sector == 0:
        return v, t, p
    if sector == 1:
        return q, v, p
    if sector == 2:
        return p, v, t
    if sector == 3:
        return p, q, v
    if sector == 4:
        return t, p, v
    return v, p, q


@register_jitable
def _adjust_hue(pixels, shift):
    for p in range(pixels.shape[0]):
        r, g, b = _shift_hue_pixel(pixels[p, 0], pixels[p, 1], pixels[p, 2], shift)
        pixels[p, 0] = r
        pixels[p, 1] = g
        pixels[p, 2] = b


def _jitter_batch(images, dst, work, indices, seed, prob, brightness, contrast, saturation, hue):
    key_of_batch = batch_key(indices)
    num_pixels = images.shape[1] * images.shape[2]
    for i in prange(images.shape[0]):
        key = sample_key(seed, key_of_batch, indices[i])
        if uniform(key, 0) < prob:
            order, factor_b, factor_c, factor_s, factor_h = draw_jitter(key, brightness, contrast, saturation, hue)
            source = images[i].reshape(num_pixels, 3)
            pixels = work[i].reshape(num_pixels, 3)
            for p in range(num_pixels):
                for c in range(3):
                    pixels[p, c] = source[p, c]
            for step in range(4):
                kind = order[step]
                if kind == 0 and brightness > 0:
                    _adjust_brightness(pixels, factor_b)
                elif kind == 1 and contrast > 0:
                    _adjust_contrast(pixels, factor_c)
                elif kind == 2 and saturation > 0:
                    _adjust_saturation(pixels, factor_s)
                elif kind == 3 and hue > 0:
                    _adjust_hue(pixels, factor_h)
            target = dst[i].reshape(num_pixels, 3)
            for p in range(num_pixels):
                for c in range(3):
                    target[p, c] = int(_clip255(pixels[p, c]) + 0.5)
        else:
            dst[i] = images[i]
    return dst


_JITTER = _Kernel(_jitter_batch)


# -------------------------------------------------------------------------------------------- grayscale
def _grayscale_batch(images, dst, indices, seed, prob):
    key_of_batch = batch_key(indices)
    for i in prange(images.shape[0]):
        if uniform(sample_key(seed, key_of_batch, indices[i]), 0) < prob:
            for y in range(images.shape[1]):
                for x in range(images.shape[2]):
                    gray = 0.2989 * images[i, y, x, 0] + 0.587 * images[i, y, x, 1] + 0.114 * images[i, y, x, 2]
                    value = int(_clip255(gray) + 0.5)
                    dst[i, y, x, 0] = value
                    dst[i, y, x, 1] = value
                    dst[i, y, x, 2] = value
        else:
            dst[i] = images[i]
    return dst


_GRAYSCALE = _Kernel(_grayscale_batch)


# ------------------------------------------------------------------------------------------------- blur
def _blur_batch(images, dst, work, indices, seed, prob, sigma_low, sigma_high, max_radius):
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
            # vectorises; the reflected border is materialised once per row instead of per tap.
            padded = np.empty((width + 2 * radius) * 3, dtype=np.float32)
            source = images[i].reshape(height, row_len)
            rows = work[i].reshape(height, row_len)
            for y in range(height):  # horizontal pass into the float scratch image
                for x in range(width + 2 * radius):
                    column = _reflect(x - radius, width)
                    for c in range(3):
                        padded[x * 3 + c] = source[y, column * 3 + c]
                out_row = rows[y]
                out_row[:] = 0.0
                for k in range(taps):
                    weight = weights[k]
                    offset = k * 3
                    for j in range(row_len):
                        out_row[j] += weight * padded[offset + j]
            accumulator = np.empty(row_len, dtype=np.float32)
            target = dst[i].reshape(height, row_len)
            for y in range(height):  # vertical pass into dst
                accumulator[:] = 0.0
                for k in range(taps):
                    weight = weights[k]
                    above = rows[_reflect(y + k - radius, height)]
                    for j in range(row_len):
                        accumulator[j] += weight * above[j]
                for j in range(row_len):
                    target[y, j] = int(_clip255(accumulator[j]) + 0.5)
        else:
            dst[i] = images[i]
    return dst


_BLUR = _Kernel(_blur_batch)


# ------------------------------------------------------------------------------------------- solarize
def _solarize_batch(images, dst, indices, seed, prob, threshold):
    key_of_batch = batch_key(indices)
    for i in prange(images.shape[0]):
        if uniform(sample_key(seed, key_of_batch, indices[i]), 0) < prob:
            for y in range(images.shape[1]):
                for x in range(images.shape[2]):
                    for c in range(3):
                        value = images[i, y, x, c]
                        dst[i, y, x, c] = 255 - value if value >= threshold else value
        else:
            dst[i] = images[i]
    return dst


_SOLARIZE = _Kernel(_solarize_batch)
