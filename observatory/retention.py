"""Disk housekeeping: copy frames to an archive, then free space, oldest first.

Pure functions, no actor: the caller (the unit's housekeeping, or an operator)
decides when to run them and records what they did as events.

    policy = RetentionPolicy(min_free_gb=20, archive_dir="/mnt/archive/images")
    copy_to_archive(pandir, policy)          # copy what is not copied yet
    deletions = plan(pandir, policy)         # what may go, oldest first
    freed = apply(deletions)                 # delete those, return bytes freed

The guarantee: a frame is deleted only if an archive copy exists at the same
relative path under ``archive_dir`` and, when planned, had the frame's size
and (with ``verify_copy``, the default) the same SHA-256. With no
``archive_dir`` configured nothing is ever deleted.

Frames are the FITS files under ``$PANDIR/images`` (layout
``images/<field>/<camera>/<sequence>/<image>.fits``; also ``.fit``, ``.fts``,
``.fits.fz``, ``.fits.gz``). Hidden files (``.name...``, such as the
temporaries of a frame being written) are never touched. A frame being
compressed (``images.compress``: both ``x.fits`` and ``x.fits.fz`` exist
until the exposure's record has moved to ``x.fits.fz`` and the analysis actor
has removed ``x.fits``) is left alone, both files, until it is one file again.
A frame's copy is ``<archive_dir>/<path relative to $PANDIR/images>``.

A frame's time is the ``start_unix`` of its row in the ``exposures`` table of
``$PANDIR/db/unit.sqlite`` (matched by path), else the file's modification
time. The database holds *simulated* time: in an accelerated simulation ages
from the two sources are not comparable, and ``max_age_days`` should be
judged against a simulated ``now``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

#: Bytes in one "GB" of the policy (decimal, as disks are sold; 5 GB = 4.66 GiB).
GB = 1_000_000_000
FRAME_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz")
_CHUNK = 1 << 20


class RetentionError(Exception):
    """Housekeeping cannot proceed safely; ``path`` is the file or directory at fault."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, freed: int = 0):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.freed = freed


@dataclass(frozen=True)
class RetentionPolicy:
    """What to keep.

    - ``min_free_gb`` (default 5.0): free space (10^9 bytes) to keep on the
      disk of ``$PANDIR/images``; frames are deleted, oldest first, until a
      deletion plan reaches it.
    - ``max_age_days`` (default None): frames older than this are deleted
      even when space allows (still only with a verified copy). None: keep
      frames as long as space allows.
    - ``archive_dir`` (default None): where frames are copied for safe
      keeping (an external disk, a mounted share). It must exist: it is never
      created, so that an unmounted disk is not silently replaced by a
      directory on the local one. None: no copy is configured and NOTHING is
      deleted.
    - ``verify_copy`` (default True): a copy is trusted only if its size and
      SHA-256 equal the frame's. False: the size alone (cheaper, weaker).
    """
    min_free_gb: float = 5.0
    max_age_days: float | None = None
    archive_dir: str | os.PathLike | None = None
    verify_copy: bool = True

    def __post_init__(self):
        if not self.min_free_gb >= 0:
            raise ValueError(f"min_free_gb must be >= 0, got {self.min_free_gb}")
        if self.max_age_days is not None and not self.max_age_days > 0:
            raise ValueError(f"max_age_days must be > 0 or None, got {self.max_age_days}")


@dataclass(frozen=True)
class Frame:
    path: Path
    relative: str              # POSIX path relative to $PANDIR/images
    size: int
    mtime_ns: int
    time_unix: float           # when it was taken (exposures.start_unix), else its mtime
    time_source: str           # 'exposures' or 'mtime'


@dataclass(frozen=True)
class Deletion:
    path: Path                 # the frame to delete
    copy: Path                 # its verified archive copy
    size: int
    mtime_ns: int              # the frame's mtime when planned; apply() re-checks it
    time_unix: float
    reason: str                # 'space' or 'age'
    sha256: str | None         # the verified digest, None when verify_copy was off


# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------

def _is_frame(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(FRAME_SUFFIXES)


def _in_compression(name: str, names: set[str]) -> bool:
    """``x.fits`` beside ``x.fits.fz`` (or the other way round): a compression
    not yet settled. Which of the two is the frame is for the record to say."""
    return f"{name}.fz" in names or (name.endswith(".fz") and name[:-3] in names)


def _has_twin(path: Path) -> bool:
    text = str(path)
    return os.path.exists(f"{text}.fz") or (text.endswith(".fz") and os.path.exists(text[:-3]))


def _exposure_times(pandir: Path, images: Path) -> dict[str, float]:
    """Relative path under images/ -> start_unix, from the exposures table."""
    db = pandir / "db" / "unit.sqlite"
    if not db.is_file():
        return {}
    rows = None
    for uri, target in ((True, f"{db.resolve().as_uri()}?mode=ro"), (False, db)):
        # A WAL database whose -shm file is missing cannot be opened read-only.
        try:
            conn = sqlite3.connect(target, uri=uri, timeout=10)
            try:
                rows = conn.execute("SELECT path, start_unix FROM exposures").fetchall()
            finally:
                conn.close()
            break
        except sqlite3.Error:
            continue
    if rows is None:
        return {}                  # unreadable: the file times are the fallback
    out = {}
    for path, start in rows:
        rel = _relative_to_images(Path(path), images)
        if rel is not None and start is not None:
            out[rel] = float(start)
    return out


def _relative_to_images(path: Path, images: Path) -> str | None:
    try:
        return path.relative_to(images).as_posix()
    except ValueError:
        pass
    # Written under another PANDIR (moved, or a mount point): match from 'images'.
    parts = path.parts
    hits = [i for i, p in enumerate(parts[:-1]) if p == "images"]
    if not hits:
        return None
    # Prefer the 'images' that leaves <field>/<camera>/<sequence>/<image>, else the last one.
    best = max(hits, key=lambda i: (len(parts) - i - 1 == 4, i))
    return "/".join(parts[best + 1:])


def list_frames(pandir: str | os.PathLike) -> list[Frame]:
    """Every frame under ``$PANDIR/images``, oldest first."""
    pandir = Path(pandir)
    images = pandir / "images"
    if not images.is_dir():
        return []
    times = _exposure_times(pandir, images)
    frames = []
    for root, dirs, files in os.walk(images):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = set(files)
        for name in sorted(files):
            if not _is_frame(name) or _in_compression(name, names):
                continue
            path = Path(root) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if not path.is_file() or path.is_symlink():
                continue
            rel = path.relative_to(images).as_posix()
            t = times.get(rel)
            frames.append(Frame(path=path, relative=rel, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                time_unix=t if t is not None else st.st_mtime,
                                time_source="exposures" if t is not None else "mtime"))
    frames.sort(key=lambda f: (f.time_unix, f.relative))
    return frames


# --------------------------------------------------------------------------
# Copies
# --------------------------------------------------------------------------

def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _archive_root(policy: RetentionPolicy) -> Path | None:
    if policy.archive_dir is None:
        return None
    root = Path(policy.archive_dir)
    if not root.exists():
        raise RetentionError(f"archive directory {root} does not exist (not mounted?); "
                             "it is never created here", root)
    if not root.is_dir():
        raise RetentionError(f"archive path {root} is not a directory", root)
    return root


def verified_copy(frame: str | os.PathLike, copy: str | os.PathLike, verify: bool = True) -> str | None:
    """Whether ``copy`` is a good copy of ``frame``.

    Returns the SHA-256 when ``verify`` and both agree, ``"size"`` when not
    ``verify`` and the sizes agree, else None (missing, or different).
    """
    frame, copy = Path(frame), Path(copy)
    try:
        if not copy.is_file() or copy.stat().st_size != frame.stat().st_size:
            return None
    except FileNotFoundError:
        return None
    if not verify:
        return "size"
    digest = sha256_of(frame)
    return digest if sha256_of(copy) == digest else None


def copy_to_archive(pandir: str | os.PathLike, policy: RetentionPolicy) -> list[Path]:
    """Copy every frame that has no good copy yet; return the copies made.

    Idempotent: a frame whose copy verifies (as ``verify_copy`` says) is
    skipped. A copy is written under a hidden temporary name beside its
    destination, flushed, verified against the frame, then renamed into
    place, so a copy at its final name is always complete. A copy that exists
    but differs from the frame (the frame was rewritten, or the copy is
    damaged) is replaced. With no ``archive_dir`` there is nothing to do.

    Raises RetentionError (naming the path) if the archive directory is
    missing or not a directory, a file cannot be written, or a fresh copy
    does not verify.
    """
    root = _archive_root(policy)
    if root is None:
        return []
    made = []
    for frame in list_frames(pandir):
        dest = root / frame.relative
        if verified_copy(frame.path, dest, policy.verify_copy):
            continue
        if _copy_one(frame.path, dest, policy.verify_copy):
            made.append(dest)
    return made


def _copy_one(src: Path, dest: Path, verify: bool) -> bool:
    """Copy ``src`` to ``dest`` atomically; False if ``src`` vanished meanwhile."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
    except FileNotFoundError as e:
        _unlink(tmp)
        if not src.exists():
            return False                            # deleted meanwhile: nothing to keep
        raise RetentionError(f"cannot copy {src} to {dest}: {e}", dest) from None
    except OSError as e:
        _unlink(tmp)
        raise RetentionError(f"cannot copy {src} to {dest}: {e}", dest) from None
    size = src.stat().st_size
    if tmp.stat().st_size != size or (verify and sha256_of(tmp) != h.hexdigest()):
        _unlink(tmp)
        raise RetentionError(f"the copy of {src} at {dest} does not match it (size or SHA-256); "
                             "nothing was replaced", dest)
    try:
        os.replace(tmp, dest)
    except OSError as e:
        _unlink(tmp)
        raise RetentionError(f"cannot move the copy of {src} into place at {dest}: {e}", dest) from None
    return True


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------
# Plan and apply
# --------------------------------------------------------------------------

def plan(pandir: str | os.PathLike, policy: RetentionPolicy, free_bytes: int | None = None, *,
         now: float | None = None) -> list[Deletion]:
    """The frames to delete, oldest first.

    Takes frames oldest first until the free space would reach
    ``min_free_gb`` (``free_bytes`` is the free space now; default: measured
    with ``shutil.disk_usage`` on ``$PANDIR/images``), plus every frame older
    than ``max_age_days`` (age measured from ``now``, default the wall clock).
    A frame without a verified copy under ``archive_dir`` is passed over, never
    planned; the plan may then fall short of the target. Deletes nothing.

    Returns [] when no ``archive_dir`` is configured. Raises RetentionError
    when it is configured but missing or not a directory.
    """
    root = _archive_root(policy)
    if root is None:
        return []
    pandir = Path(pandir)
    images = pandir / "images"
    if not images.is_dir():
        return []
    if free_bytes is None:
        free_bytes = shutil.disk_usage(images).free
    need = policy.min_free_gb * GB - free_bytes
    now = time.time() if now is None else float(now)
    max_age_s = None if policy.max_age_days is None else policy.max_age_days * 86400.0
    out: list[Deletion] = []
    freed = 0
    for frame in list_frames(pandir):
        too_old = max_age_s is not None and now - frame.time_unix > max_age_s
        if freed >= need and not too_old:
            break                      # frames are oldest first: none further is too old either
        check = verified_copy(frame.path, root / frame.relative, policy.verify_copy)
        if not check:
            continue
        out.append(Deletion(path=frame.path, copy=root / frame.relative, size=frame.size,
                            mtime_ns=frame.mtime_ns, time_unix=frame.time_unix,
                            reason="age" if too_old else "space",
                            sha256=check if policy.verify_copy else None))
        freed += frame.size
    return out


def apply(deletions: list[Deletion]) -> int:
    """Delete the planned frames; return the bytes freed. Records nothing.

    Just before each deletion the frame must still have the size and
    modification time it had when planned, and its copy must still exist
    with that size, and it must not have a compressed twin (a compression
    begun since the plan); a frame that fails this is kept. A frame already gone is
    skipped. If any frame was kept, RetentionError is raised after the others
    are done (``.path``: the first kept frame, ``.freed``: the bytes freed).
    """
    freed = 0
    kept: list[tuple[Path, str]] = []
    for d in deletions:
        try:
            st = os.stat(d.path)
        except FileNotFoundError:
            continue
        if st.st_size != d.size or st.st_mtime_ns != d.mtime_ns:
            kept.append((d.path, "the frame changed since the plan"))
            continue
        if _has_twin(d.path):
            kept.append((d.path, "it is being compressed (its .fits.fz twin appeared since the plan)"))
            continue
        try:
            copy_size = os.stat(d.copy).st_size
        except OSError:
            copy_size = None
        if copy_size != d.size:
            kept.append((d.path, f"its copy {d.copy} is gone or changed"))
            continue
        try:
            os.unlink(d.path)
        except FileNotFoundError:
            continue
        except OSError as e:
            kept.append((d.path, f"cannot delete: {e}"))
            continue
        freed += d.size
    if kept:
        detail = "; ".join(f"{p}: {why}" for p, why in kept[:5])
        more = f" (and {len(kept) - 5} more)" if len(kept) > 5 else ""
        raise RetentionError(f"{len(kept)} planned frame(s) kept: {detail}{more}", kept[0][0], freed)
    return freed
