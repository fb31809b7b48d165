"""FITS header keywords and image paths (observatory/headers.py)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from observatory import __version__
from observatory.clock import parse_iso
from observatory.headers import airmass, compact_time, image_path, observation_header, safe_name
from observatory.imaging import as_fits_header, write_fits_atomic

SITE = {"name": "Mauna Loa Observatory", "latitude": 19.54, "longitude": -155.58, "elevation": 3400.0,
        "observe_horizon": -18.0, "min_altitude": 30.0}
MOUNT = {"ra_deg": 300.182123456, "dec_deg": 22.710861234, "ha_deg": -30.0, "alt_deg": 60.0,
         "pier_side": "west", "state": "tracking"}
MOON = {"separation_deg": 87.65432, "illumination": 0.987654}


def header(**overrides):
    kw = dict(field="HD 189733", seq_id="PAN000_20261124T063000", image_id="cam00_20261124T063512",
              mount=MOUNT, site=SITE, moon=MOON, config_hash="0123456789abcdef", decision_id="d42",
              safe=True, unit_name="Generic PANOPTES Unit")
    kw.update(overrides)
    return observation_header(**kw)


# --------------------------------------------------------------------------
# Paths and ids
# --------------------------------------------------------------------------

def test_image_path_layout(tmp_path):
    p = image_path(tmp_path, "HD 189733", "cam00", "PAN000_20261124T063000", "cam00_20261124T063512")
    assert p == tmp_path / "images" / "HD_189733" / "cam00" / "PAN000_20261124T063000" / "cam00_20261124T063512.fits"
    assert isinstance(p, Path)


def test_image_path_accepts_a_string_pandir():
    p = image_path("/data/pan", "M42", "cam01", "seq", "img")
    assert str(p) == "/data/pan/images/M42/cam01/seq/img.fits"


@pytest.mark.parametrize("field", ["../../etc", "a/b", "/abs/path", "a b/../c", "x.."])
def test_image_path_stays_under_images(tmp_path, field):
    p = image_path(tmp_path, field, "../cam", "seq", "img")
    resolved = p.resolve()
    assert resolved.is_relative_to((tmp_path / "images").resolve())
    assert len(resolved.relative_to((tmp_path / "images").resolve()).parts) == 4


@pytest.mark.parametrize("field, camera", [("..", "cam00"), ("HD 189733", ".."), (".", "cam00")])
def test_image_path_dot_names_stay_in_their_level(tmp_path, field, camera):
    p = image_path(tmp_path, field, camera, "seq", "img")
    resolved = p.resolve()
    assert resolved.is_relative_to((tmp_path / "images").resolve())
    assert len(resolved.relative_to((tmp_path / "images").resolve()).parts) == 4


@pytest.mark.parametrize("text, expected", [
    ("HD 189733", "HD_189733"),
    ("WASP-12", "WASP-12"),
    ("a/b\\c", "a_b_c"),
    ("  spaced  ", "spaced"),
    ("///", "unnamed"),
    ("", "unnamed"),
    ("M31+M32.v2", "M31+M32.v2"),
])
def test_safe_name(text, expected):
    assert safe_name(text) == expected


def test_compact_time():
    assert compact_time(parse_iso("2026-11-24T05:30:12.789")) == "20261124T053012"


# --------------------------------------------------------------------------
# Airmass
# --------------------------------------------------------------------------

def test_airmass_zenith():
    assert airmass(90.0) == pytest.approx(1.0, abs=1e-3)


def test_airmass_thirty_degrees():
    assert airmass(30.0) == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize("alt, expected", [(60.0, 1.154), (45.0, 1.413), (20.0, 2.903), (10.0, 5.586)])
def test_airmass_kasten_young_values(alt, expected):
    assert airmass(alt) == pytest.approx(expected, abs=2e-3)


def test_airmass_decreases_with_altitude_and_is_bounded():
    alts = np.linspace(0.01, 90.0, 400)
    values = [airmass(a) for a in alts]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[0] < 40.0
    assert airmass(0.0) == 40.0 and airmass(-5.0) == 40.0


# --------------------------------------------------------------------------
# Observation header
# --------------------------------------------------------------------------

EXPECTED_KEYS = {"OBJECT", "FIELD", "IMAGEID", "SEQID", "RA-MNT", "DEC-MNT", "HA-MNT", "PIERSIDE", "EQUINOX",
                 "AIRMASS", "LAT-OBS", "LONG-OBS", "ELEV-OBS", "MOONSEP", "MOONFRAC", "ORIGIN", "OBSERVER",
                 "SWVER", "CFGHASH", "DECISID", "SAFE"}


def test_observation_header_keys():
    h = header()
    assert set(h) == EXPECTED_KEYS
    for key, item in h.items():
        assert isinstance(item, tuple) and len(item) == 2, key
        assert len(key) <= 8, f"{key} would need a HIERARCH card"


def test_observation_header_values():
    h = header()
    assert h["OBJECT"][0] == "HD 189733" and h["FIELD"][0] == "HD 189733"
    assert h["IMAGEID"][0] == "cam00_20261124T063512"
    assert h["SEQID"][0] == "PAN000_20261124T063000"
    assert h["RA-MNT"][0] == pytest.approx(300.18212) and h["DEC-MNT"][0] == pytest.approx(22.71086)
    assert h["HA-MNT"][0] == pytest.approx(-2.0)            # hours
    assert h["PIERSIDE"][0] == "west"
    assert h["AIRMASS"][0] == pytest.approx(airmass(60.0), abs=1e-4)
    assert (h["LAT-OBS"][0], h["LONG-OBS"][0], h["ELEV-OBS"][0]) == (19.54, -155.58, 3400.0)
    assert h["MOONSEP"][0] == pytest.approx(87.654) and h["MOONFRAC"][0] == pytest.approx(0.9877)
    assert h["SWVER"][0] == __version__
    assert h["CFGHASH"][0] == "0123456789abcdef" and h["DECISID"][0] == "d42"
    assert h["SAFE"][0] is True
    assert h["OBSERVER"][0] == "Generic PANOPTES Unit"


def test_observation_header_without_mount_or_moon_data():
    """Before the first mount status the values are undefined, not a crash."""
    h = header(mount={}, moon={}, decision_id=None, safe=0)
    assert h["AIRMASS"][0] is None
    assert math.isnan(h["RA-MNT"][0]) and math.isnan(h["MOONSEP"][0])
    assert h["PIERSIDE"][0] == "" and h["DECISID"][0] == "" and h["SAFE"][0] is False
    # ...and it still goes into a FITS header (NaN becomes an undefined value).
    fh = as_fits_header(h)
    assert fh["AIRMASS"] is None or isinstance(fh["AIRMASS"], fits.card.Undefined)


def test_observation_header_round_trips_through_a_fits_file(tmp_path):
    path = write_fits_atomic(tmp_path / "x.fits", np.zeros((16, 16), dtype=np.uint16), header())
    with fits.open(path) as hdul:
        h = hdul[0].header
    assert h["OBJECT"] == "HD 189733"
    assert h["HA-MNT"] == pytest.approx(-2.0)
    assert h["SAFE"] is True
    assert h["CFGHASH"] == "0123456789abcdef"
    assert h.comments["AIRMASS"] == "Kasten & Young"
