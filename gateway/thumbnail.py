"""A small PNG of a FITS frame for the dashboard: block-averaged down to a
width, stretched between percentiles (asinh), written as 8-bit greyscale
PNG with zlib. astropy is imported on the first frame only."""
from __future__ import annotations

import struct
import zlib

import numpy as np

MAX_WIDTH = 480


def read_fits_image(path: str) -> np.ndarray:
    from astropy.io import fits
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.data is not None and getattr(hdu.data, "ndim", 0) >= 2:
                data = np.asarray(hdu.data, dtype=np.float32)
                while data.ndim > 2:        # a cube: its first plane
                    data = data[0]
                return data
    raise ValueError(f"{path}: no image in this FITS file")


def downsample(image: np.ndarray, max_width: int = MAX_WIDTH) -> np.ndarray:
    h, w = image.shape
    factor = max(1, -(-w // max_width))
    if factor == 1:
        return image
    h2, w2 = h // factor, w // factor
    if h2 == 0 or w2 == 0:
        return image
    return image[:h2 * factor, :w2 * factor].reshape(h2, factor, w2, factor).mean(axis=(1, 3))


def stretch(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.7) -> np.ndarray:
    """0..255 uint8: percentile clip, then an asinh stretch that brings out faint stars."""
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, dtype=np.uint8)
    values = image[finite]
    lo, hi = np.percentile(values, [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((np.where(finite, image, lo) - lo) / (hi - lo), 0.0, 1.0)
    beta = 10.0
    scaled = np.arcsinh(beta * scaled) / np.arcsinh(beta)
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def encode_png(grey: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG (colour type 0), one filter byte 0 per row."""
    if grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError("encode_png wants a 2-D uint8 array")
    h, w = grey.shape
    raw = np.hstack([np.zeros((h, 1), dtype=np.uint8), grey]).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def thumbnail_png(path: str, max_width: int = MAX_WIDTH) -> bytes:
    image = read_fits_image(path)
    # FITS rows go upwards; a picture's go downwards.
    return encode_png(stretch(downsample(image, max_width))[::-1].copy())
