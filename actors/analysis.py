"""The analysis actor: measures frames in a worker thread (CPU-heavy work never
holds the message loop) and answers with the figures."""
from __future__ import annotations

import queue
import threading

from actors.base import UnitActor
from messages import AnalyzeFrame, FrameAnalyzed, Tick
from observatory.imaging import ImageError, measure_drift, measure_frame


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
                result = FrameAnalyzed(exposure_id=msg.exposure_id, camera=msg.camera, path=msg.path,
                                       metrics=metrics.to_dict(), sources=tuple(metrics.sources),
                                       drift_px=tuple(drift) if drift else None, request_id=msg.request_id)
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
