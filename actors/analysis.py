"""The analysis actor: measures frames in a worker thread (CPU-heavy work never
holds the message loop) and answers with the figures."""
from __future__ import annotations

import queue
import threading

from actors.base import UnitActor
from messages import AnalyzeFrame, FrameAnalyzed, Tick
from observatory.imaging import ImageError, measure_drift, measure_frame, write_wcs


class AnalysisActor(UnitActor):
    role = "analysis"

    def setup(self, msg):
        self.todo: queue.PriorityQueue = queue.PriorityQueue()
        self.sequence = 0
        self.done: queue.Queue = queue.Queue()
        self.pending = 0
        self.worker = threading.Thread(target=self._work, daemon=True, name="analysis")
        self.worker.start()
        return {}

    def device_status(self):
        return {"pending": self.pending}

    def _work(self):
        while True:
            _, _, item = self.todo.get()
            if item is None:
                return
            msg, sender = item
            try:
                metrics = measure_frame(msg.path)
                drift = None
                if msg.reference_sources:
                    drift = measure_drift(msg.reference_sources, metrics.sources)
                figures = metrics.to_dict()
                solution = self._solve(msg, figures, metrics.sources) if msg.solve else None
                result = FrameAnalyzed(exposure_id=msg.exposure_id, camera=msg.camera, path=msg.path,
                                       metrics=figures, sources=tuple(metrics.sources),
                                       drift_px=tuple(drift) if drift else None, solution=solution,
                                       request_id=msg.request_id)
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

    def _solve(self, msg: AnalyzeFrame, figures: dict, sources) -> dict | None:
        """Plate-solve the frame (hints from its header); on success write the WCS
        into the file (atomically) and return the solution. Failures go into the
        figures as ``solve_error``: a frame that does not solve is still a frame.
        "fast": the fast solver on the sources just measured (no second read or
        extraction); "full": the fast solver, then astrometry.net's solve-field."""
        import time

        from astropy.io import fits

        from observatory import solver
        from observatory.catalog import CatalogError, shared_tycho2
        catalog = shared_tycho2(self.settings.get("limit_mag"))
        try:
            if msg.solve == "fast":
                t0 = time.perf_counter()
                hdr = fits.getheader(msg.path)
                ra, dec = hdr.get("RA-MNT"), hdr.get("DEC-MNT")
                scale = hdr.get("PIXSCALE") or (206.265 * hdr["XPIXSZ"] / hdr["FOCALLEN"]
                                                if hdr.get("XPIXSZ") and hdr.get("FOCALLEN") else None)
                if not all(isinstance(v, (int, float)) for v in (ra, dec, scale)):
                    figures["solve_error"] = "no pointing or pixel-scale hints in the header"
                    return None
                solution = solver.fast_solve(sources, (hdr["NAXIS2"], hdr["NAXIS1"]), ra, dec, scale, catalog)
                solution = solution and solution.with_seconds(time.perf_counter() - t0)
            else:
                solution = solver.solve(msg.path, catalog=catalog,
                                        timeout_s=float(self.settings.get("solve_timeout", 60.0)))
        except (solver.SolveError, CatalogError, OSError, KeyError, ZeroDivisionError) as e:
            figures["solve_error"] = f"{type(e).__name__}: {e}"
            return None
        if solution is None:
            figures["solve_error"] = "no solution"
            return None
        write_wcs(msg.path, solution)
        figures.update(solved_ra_deg=solution.ra_deg, solved_dec_deg=solution.dec_deg,
                       solve_method=solution.method, solve_seconds=round(solution.seconds, 3))
        return solution.to_dict()

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
        if getattr(self, "todo", None):
            self.todo.put((-1, 0, None))
