"""The analysis actor: measures frames in a worker thread (CPU-heavy work never
holds the message loop) and answers with the figures.

With ``images.compress: rice`` (setting ``compress``) each analysed frame is
then rewritten as a verified ``.fits.fz`` (observatory/imaging.py
``compress_frame``). The order keeps the exposure's record and the files in
agreement at every moment a crash could come:

1. ``x.fits.fz`` is written beside ``x.fits`` (temporary, fsync, read back
   and compared, rename);
2. the figures sent back carry ``compressed_path``/``compressed_from``; the
   supervisor passes them to the archive with the rest, which moves the
   exposure's record to ``x.fits.fz`` (observatory/archive.py
   ``record_compressed``);
3. this actor sees the record name ``x.fits.fz`` (it reads the database,
   never writes it) and only then removes ``x.fits``.

A frame found with both files (a crash between 1 and 3) keeps the one the
record names: at the first start of a unit every pair is settled at once;
after a restart of this actor alone, pairs whose record has not moved yet
are watched like new ones (their figures may still be on their way).
"""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

from actors.base import UnitActor
from messages import AnalyzeFrame, FrameAnalyzed, Tick
from observatory.imaging import (COMPRESSION_CHOICES, CompressionError, ImageError, compress_frame,
                                 compressed_path, find_twins, is_compressed, measure_drift, measure_frame,
                                 read_header, remove_file, remove_plain, write_wcs)

# Wall seconds between looks at the database for records that moved to their .fits.fz.
SETTLE_INTERVAL_S = 0.5
# A plain frame waits this long (wall) for its record to move; then it is left
# for the next start of the unit to settle.
SETTLE_GIVE_UP_S = 900.0


def _same_file(a: str | None, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (spelling aside)."""
    if a is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def _read_only(pandir: str | os.PathLike) -> sqlite3.Connection | None:
    """The archive's database, read-only (the archive actor is its only writer)."""
    db = Path(pandir) / "db" / "unit.sqlite"
    if not db.is_file():
        return None
    try:
        return sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None


def _recorded_by_name(pandir: str | os.PathLike, names: set[str]) -> dict[str, list[str]] | None:
    """File name -> recorded paths with that name; None if the database exists but cannot be read."""
    if not (Path(pandir) / "db" / "unit.sqlite").exists():
        return {}
    conn = _read_only(pandir)
    if conn is None:
        return None
    try:
        out: dict[str, list[str]] = {}
        for (path,) in conn.execute("SELECT path FROM exposures"):
            name = os.path.basename(path)
            if name in names:
                out.setdefault(name, []).append(path)
        return out
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def settle_twins(pandir: str | os.PathLike, fresh_start: bool, log=None) -> list[tuple[str, str]]:
    """Frames under ``$PANDIR/images`` found as both x.fits and x.fits.fz (a
    compression cut short by a crash or a stop): keep the one the record names,
    remove the other. At a fresh start of the unit nothing can still be on its
    way to the archive, so a pair whose record does not name the .fits.fz (or
    that has no record) keeps the plain frame. Otherwise (this actor restarted
    alone) such a pair may still have its figures on their way: it is returned
    as (plain, compressed) to be watched. A database that exists but cannot be
    read settles nothing."""
    images = Path(pandir) / "images"
    twins = find_twins(images) if images.is_dir() else []
    if not twins:
        return []
    by_name = _recorded_by_name(pandir, {p.name for pair in twins for p in pair})
    if by_name is None:
        if log:
            log.warning("twins_unsettled", n=len(twins), note="database unreadable; both forms kept")
        return []
    watch = []
    for plain, compressed in twins:
        recorded = by_name.get(plain.name, []) + by_name.get(compressed.name, [])
        try:
            if any(_same_file(r, compressed) for r in recorded):
                remove_plain(plain, compressed)
                if log:
                    log.info("twin_settled", kept=str(compressed), removed=str(plain))
            elif fresh_start:
                remove_file(compressed)
                if log:
                    log.info("twin_settled", kept=str(plain), removed=str(compressed))
            else:
                watch.append((str(plain), str(compressed)))
        except (OSError, CompressionError) as e:
            if log:
                log.error("twin_unsettled", path=str(plain), error=str(e))
    return watch


class AnalysisActor(UnitActor):
    role = "analysis"

    def setup(self, msg):
        self.compress = self.settings.get("compress") or "none"
        if self.compress not in COMPRESSION_CHOICES:
            raise ValueError(f"compress must be one of {COMPRESSION_CHOICES}, got {self.compress!r}")
        self.todo: queue.PriorityQueue = queue.PriorityQueue()
        self.sequence = 0
        self.done: queue.Queue = queue.Queue()
        self.pending = 0
        # Worker thread only: plain frame -> (exposure id or None, its .fits.fz, wall time since)
        self.awaiting: dict[str, tuple[str | None, str, float]] = {}
        self.last_settle = 0.0
        self.compressed_count = 0
        self.worker = threading.Thread(target=self._work, daemon=True, name="analysis")
        # First job: frames left with both forms by an earlier run or incarnation.
        self.todo.put((0, 0, ("leftovers", msg.epoch <= 1)))
        self.worker.start()
        return {"compress": self.compress}

    def device_status(self):
        return {"pending": self.pending, "compress": self.compress, "compressed": self.compressed_count,
                "awaiting_record": len(self.awaiting)}

    def _work(self):
        while True:
            try:
                _, _, item = self.todo.get(timeout=SETTLE_INTERVAL_S if self.awaiting else None)
            except queue.Empty:
                self._settle_awaiting()
                continue
            if item is None:
                self._settle_awaiting(force=True)
                return
            if isinstance(item[0], str):
                self._settle_leftovers(fresh_start=item[1])
                continue
            msg, sender = item
            try:
                result = self._analyze(msg)
            except ImageError as e:
                result = FrameAnalyzed(exposure_id=msg.exposure_id, camera=msg.camera, path=msg.path,
                                       metrics={"error": str(e)}, request_id=msg.request_id)
            except Exception as e:  # noqa: BLE001 - the worker must outlive any one bad frame
                import traceback
                self.log.error("analysis_crashed", path=msg.path, error=repr(e), trace=traceback.format_exc())
                result = FrameAnalyzed(exposure_id=msg.exposure_id, camera=msg.camera, path=msg.path,
                                       metrics={"error": f"{msg.path}: analysis failed: {type(e).__name__}: {e}"},
                                       request_id=msg.request_id)
            self.done.put((result, sender))
            self._settle_awaiting()

    def _analyze(self, msg: AnalyzeFrame) -> FrameAnalyzed:
        path = msg.path
        if not Path(path).exists() and compressed_path(path).is_file():
            path = str(compressed_path(path))        # compressed already (a request sent again after a restart)
        metrics = measure_frame(path)
        drift = None
        if msg.reference_sources:
            drift = measure_drift(msg.reference_sources, metrics.sources)
        figures = metrics.to_dict()
        solution = self._solve(msg, path, figures, metrics.sources) if msg.solve else None
        if self.compress != "none" and not is_compressed(path):
            self._compress(msg, path, figures)
        return FrameAnalyzed(exposure_id=msg.exposure_id, camera=msg.camera, path=msg.path,
                             metrics=figures, sources=tuple(metrics.sources),
                             drift_px=tuple(drift) if drift else None, solution=solution,
                             request_id=msg.request_id)

    def _compress(self, msg: AnalyzeFrame, path: str, figures: dict) -> None:
        """Write the verified .fits.fz; the figures tell the archive to move the
        record; the plain frame goes once the record has moved. A failure is a
        figure (``compress_error``), never an analysis error: the plain frame
        stays as it is and stays recorded."""
        try:
            done = compress_frame(path, self.compress)
        except CompressionError as e:
            figures["compress_error"] = str(e)
            self.log.warning("compress_failed", path=path, error=str(e))
            return
        # The record is moved by its exact spelling: the request's path, and that plus ".fz".
        figures.update(done.to_dict(), compressed_from=path, compressed_path=f"{path}.fz")
        self.compressed_count += 1
        self.awaiting[path] = (msg.exposure_id, f"{path}.fz", time.time())
        self.log.info("frame_compressed", path=str(done.path), ratio=round(done.ratio, 3),
                      seconds=round(done.seconds, 3), algorithm=done.algorithm)

    # ------------------------------------------------------------ plain frames whose record moved

    def _recorded(self, plain: str, compressed: str, exposure_id: str | None) -> tuple[bool, str | None]:
        """(could read, the path the exposure's record names now, or None if no record)."""
        conn = _read_only(self.pandir)
        if conn is None:
            return False, None
        try:
            if exposure_id:
                row = conn.execute("SELECT path FROM exposures WHERE id=?", (exposure_id,)).fetchone()
            else:
                row = conn.execute("SELECT path FROM exposures WHERE path IN (?, ?)", (plain, compressed)).fetchone()
            return True, row[0] if row else None
        except sqlite3.Error:
            return False, None
        finally:
            conn.close()

    def _settle_awaiting(self, force: bool = False) -> None:
        if not self.awaiting or (not force and time.monotonic() - self.last_settle < SETTLE_INTERVAL_S):
            return
        self.last_settle = time.monotonic()
        for plain, (exposure_id, compressed, since) in list(self.awaiting.items()):
            try:
                readable, recorded = self._recorded(plain, compressed, exposure_id)
                if readable and _same_file(recorded, compressed):
                    remove_plain(plain, compressed)           # the record names the .fits.fz: the plain frame goes
                    del self.awaiting[plain]
                    self.log.info("plain_frame_removed", path=plain, recorded=recorded)
                elif readable and recorded is not None and not _same_file(recorded, plain):
                    # The record went elsewhere meanwhile (retention moved it to its copy): the
                    # .fits.fz is nobody's frame.
                    remove_file(compressed)
                    del self.awaiting[plain]
                    self.log.warning("compressed_frame_removed", path=compressed, recorded=recorded)
                elif time.time() - since > SETTLE_GIVE_UP_S:
                    del self.awaiting[plain]
                    self.log.warning("record_not_moved", path=plain, compressed=compressed,
                                     note="both kept; settled at the next start of the unit")
            except (OSError, CompressionError) as e:
                del self.awaiting[plain]
                self.log.error("plain_frame_not_removed", path=plain, error=str(e))

    def _settle_leftovers(self, fresh_start: bool) -> None:
        for plain, compressed in settle_twins(self.pandir, fresh_start, self.log):
            self.awaiting[plain] = (None, compressed, time.time())

    # ------------------------------------------------------------ plate solving

    def _solve(self, msg: AnalyzeFrame, path: str, figures: dict, sources) -> dict | None:
        """Plate-solve the frame (hints from its header); on success write the WCS
        into the file (atomically) and return the solution. Failures go into the
        figures as ``solve_error``: a frame that does not solve is still a frame.
        "fast": the fast solver on the sources just measured (no second read or
        extraction); "full": the fast solver, then astrometry.net's solve-field."""
        from observatory import solver
        from observatory.catalog import CatalogError, shared_tycho2
        catalog = shared_tycho2(self.settings.get("limit_mag"))
        try:
            if msg.solve == "fast":
                t0 = time.perf_counter()
                hdr = read_header(path)
                ra, dec = hdr.get("RA-MNT"), hdr.get("DEC-MNT")
                scale = hdr.get("PIXSCALE") or (206.265 * hdr["XPIXSZ"] / hdr["FOCALLEN"]
                                                if hdr.get("XPIXSZ") and hdr.get("FOCALLEN") else None)
                if not all(isinstance(v, (int, float)) for v in (ra, dec, scale)):
                    figures["solve_error"] = "no pointing or pixel-scale hints in the header"
                    return None
                solution = solver.fast_solve(sources, (hdr["NAXIS2"], hdr["NAXIS1"]), ra, dec, scale, catalog)
                solution = solution and solution.with_seconds(time.perf_counter() - t0)
            else:
                solution = solver.solve(path, catalog=catalog,
                                        timeout_s=float(self.settings.get("solve_timeout", 60.0)))
        except (solver.SolveError, CatalogError, ImageError, OSError, KeyError, ZeroDivisionError) as e:
            figures["solve_error"] = f"{type(e).__name__}: {e}"
            return None
        if solution is None:
            figures["solve_error"] = "no solution"
            return None
        write_wcs(path, solution)
        figures.update(solved_ra_deg=solution.ra_deg, solved_dec_deg=solution.dec_deg,
                       solve_method=solution.method, solve_seconds=round(solution.seconds, 3))
        return solution.to_dict()

    # ------------------------------------------------------------ the message loop

    def receiveMsg_AnalyzeFrame(self, msg: AnalyzeFrame, sender):
        # Urgent frames (the sequence waits for them) overtake queued science frames.
        self.sequence += 1
        self.todo.put((0 if msg.urgent else 1, self.sequence, (msg, sender)))
        self.pending += 1
        if self.pending == 1:
            self.wake_in_wall(0.005, "collect")

    def on_tick(self, tick: Tick):
        while True:
            try:
                result, sender = self.done.get_nowait()
            except queue.Empty:
                break
            self.pending -= 1
            self.log.info("frame_measured", path=result.path, n_stars=result.metrics.get("n_stars"),
                          error=result.metrics.get("error"), queued=self.pending)
            self.send(sender, result)
        if self.pending:
            self.wake_in_wall(0.01, "collect")

    def teardown(self):
        if not getattr(self, "todo", None):
            return
        self.todo.put((-1, 0, None))
        # The worker settles the records that moved by now, then ends.
        worker = getattr(self, "worker", None)
        if worker is not None and worker.is_alive():
            worker.join(timeout=3.0)
        if worker is None or worker.is_alive():
            return                  # still busy: the next start settles what it leaves
        # Figures that never left this actor: nobody else knows of their .fits.fz,
        # so the frame goes back to its one recorded (plain) form.
        while True:
            try:
                result, _ = self.done.get_nowait()
            except queue.Empty:
                break
            plain = result.metrics.get("compressed_from")
            entry = self.awaiting.pop(plain, None) if plain else None
            if entry is not None:
                try:
                    remove_file(entry[1])
                    self.log.info("compression_undone", path=entry[1], note="stopped before its record moved")
                except OSError as e:
                    self.log.error("compression_not_undone", path=entry[1], error=str(e))
