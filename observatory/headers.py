"""FITS header keywords and image paths for the frames the unit takes."""
from __future__ import annotations

import math
import re
from pathlib import Path

from observatory import __version__
from observatory.clock import iso


def safe_name(text: str) -> str:
    # Dots stay inside names (HD 189733.01) but never lead: '.' and '..' are directories.
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_.") or "unnamed"


def compact_time(unix: float) -> str:
    """20261124T053012 style, used in sequence and image ids (as POCS does)."""
    return iso(unix)[:19].replace("-", "").replace(":", "")


def image_path(pandir: str | Path, field: str, camera: str, seq_id: str, image_id: str) -> Path:
    """$PANDIR/images/<field>/<camera>/<sequence id>/<image id>.fits"""
    return Path(pandir) / "images" / safe_name(field) / safe_name(camera) / seq_id / f"{image_id}.fits"


def airmass(alt_deg: float) -> float:
    """Kasten & Young (1989), good down to the horizon."""
    if alt_deg <= 0:
        return 40.0
    return 1.0 / (math.sin(math.radians(alt_deg)) + 0.50572 * (alt_deg + 6.07995) ** -1.6364)


def observation_header(*, field: str, seq_id: str, image_id: str, mount: dict, site: dict, moon: dict,
                       config_hash: str, decision_id: str | None, safe: bool, unit_name: str) -> dict:
    alt = mount.get("alt_deg")
    return {
        "OBJECT": (field, "target field"),
        "FIELD": (field, "scheduler field name"),
        "IMAGEID": (image_id, "unit, camera and start time"),
        "SEQID": (seq_id, "observation sequence id"),
        "RA-MNT": (round(mount.get("ra_deg", float("nan")), 5), "mount RA [deg]"),
        "DEC-MNT": (round(mount.get("dec_deg", float("nan")), 5), "mount Dec [deg]"),
        "HA-MNT": (round(mount.get("ha_deg", float("nan")) / 15.0, 5), "mount hour angle [h]"),
        "PIERSIDE": (mount.get("pier_side", ""), "side of pier"),
        "EQUINOX": (2000.0, "equinox of coordinates"),
        "AIRMASS": (round(airmass(alt), 4) if alt is not None else None, "Kasten & Young"),
        "LAT-OBS": (site["latitude"], "[deg]"),
        "LONG-OBS": (site["longitude"], "[deg] east positive"),
        "ELEV-OBS": (site["elevation"], "[m]"),
        "MOONSEP": (round(moon.get("separation_deg", float("nan")), 3), "moon separation [deg]"),
        "MOONFRAC": (round(moon.get("illumination", float("nan")), 4), "moon illuminated fraction"),
        "ORIGIN": ("panoptes-unit", ""),
        "OBSERVER": (unit_name, "unit name"),
        "SWVER": (__version__, "observatory software version"),
        "CFGHASH": (config_hash, "hash of the configuration in force"),
        "DECISID": (decision_id or "", "scheduler decision id"),
        "SAFE": (bool(safe), "safety verdict at exposure start"),
    }
