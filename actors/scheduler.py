"""The scheduler actor: answers 'what now?' with an explained decision.
The fields file is re-read when it changes; a broken file keeps the last
good list and says why."""
from __future__ import annotations

import os

from actors.base import UnitActor
from messages import CheckObservation, ObservationChecked, RequestSchedule, ScheduleDecision, new_request_id
from observatory.astro import Ephemeris, Site
from observatory.config import scheduler_kwargs
from observatory.scheduler import FieldsError, Scheduler, load_fields


class SchedulerActor(UnitActor):
    role = "scheduler"

    def setup(self, msg):
        s = self.settings
        self.fields_file = s["fields_file"]
        self.ephemeris = Ephemeris(Site(self.site["name"], self.site["latitude"], self.site["longitude"],
                                        self.site["elevation"]))
        observations = load_fields(self.fields_file)     # a broken file at start-up is fatal
        self.fields_mtime = os.stat(self.fields_file).st_mtime_ns
        self.fields_error = None
        self.scheduler = Scheduler(observations, self.ephemeris, **scheduler_kwargs(s, self.site))
        self.by_name = {o.name: o for o in observations}
        # Build tonight's ephemeris now, during start-up, not at the first decision at dusk.
        self.scheduler.decide(self.clock.now())
        return {"fields": len(observations)}

    def reconfigure(self):
        self.scheduler = Scheduler(list(self.by_name.values()), self.ephemeris,
                                   **scheduler_kwargs(self.settings, self.site))

    def device_status(self):
        return {"fields": len(self.by_name), "fields_file": self.fields_file, "fields_error": self.fields_error}

    def _reload_if_changed(self):
        try:
            mtime = os.stat(self.fields_file).st_mtime_ns
        except OSError as e:
            self.fields_error = f"{self.fields_file}: {e.strerror}; keeping the last good list"
            return
        if mtime == self.fields_mtime:
            return
        self.fields_mtime = mtime
        try:
            observations = load_fields(self.fields_file)
        except FieldsError as e:
            self.fields_error = f"{e}; keeping the last good list"
            self.log.error("fields_file_invalid", error=str(e))
            return
        self.fields_error = None
        self.scheduler.set_observations(observations)
        self.by_name = {o.name: o for o in observations}
        self.log.info("fields_reloaded", fields=len(observations))

    def receiveMsg_RequestSchedule(self, msg: RequestSchedule, sender):
        self._reload_if_changed()
        decision = self.scheduler.decide(msg.time_unix, current=msg.current,
                                         exposures_done=dict(msg.exposures_done))
        winner_name, reason = decision.winner, decision.reason
        requested = None
        if msg.requested:
            # The operator's choice wins over merit, never over a veto (altitude, sun, moon, ...).
            candidate = next((c for c in decision.candidates if c.name == msg.requested), None)
            vetoes = ["unknown field"] if candidate is None else list(candidate.vetoes)
            requested = {"name": msg.requested, "accepted": not vetoes, "vetoes": vetoes}
            if not vetoes:
                winner_name = msg.requested
                reason = f"{msg.requested}: requested by the operator (the scheduler's choice: {decision.winner})"
            else:
                reason = f"requested {msg.requested} refused ({', '.join(vetoes)}); {decision.reason}"
        winner = self.by_name.get(winner_name) if winner_name else None
        observation = None
        if winner is not None:
            observation = {"name": winner.name, "ra_deg": winner.ra_deg, "dec_deg": winner.dec_deg,
                           "priority": winner.priority, "exptime": winner.exptime, "min_nexp": winner.min_nexp,
                           "exp_set_size": winner.exp_set_size, "dither_arcsec": winner.dither_arcsec}
        explained = decision.to_dict()
        if requested:
            explained["requested"] = requested
        if self.fields_error:
            explained["fields_error"] = self.fields_error
        self.send(sender, ScheduleDecision(decision_id=new_request_id(), winner=winner_name,
                                           reason=reason, observation=observation,
                                           decision=explained, request_id=msg.request_id))

    def receiveMsg_CheckObservation(self, msg: CheckObservation, sender):
        self._reload_if_changed()
        decision = self.scheduler.decide(msg.time_unix, current=msg.name, exposures_done=dict(msg.exposures_done))
        candidate = next((c for c in decision.candidates if c.name == msg.name), None)
        vetoes = ("unknown field",) if candidate is None else tuple(candidate.vetoes)
        self.send(sender, ObservationChecked(name=msg.name, ok=not vetoes, vetoes=vetoes,
                                             request_id=msg.request_id))
