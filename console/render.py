"""Human-readable text for the console: status, events, decisions, replies.

Plain functions from the JSON the unit returns to text; no I/O, no imports
beyond the standard library, so they are cheap and easy to test."""
from __future__ import annotations

import json
from datetime import datetime

BAR_WIDTH = 24


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _short(text: str | None) -> str:
    """2026-11-24T08:14:02.123 -> 2026-11-24 08:14:02"""
    return (text or "?")[:19].replace("T", " ")


def duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def hms(ra_deg: float) -> str:
    h = (ra_deg % 360.0) / 15.0
    hh, rem = int(h), (h - int(h)) * 60
    mm = int(rem)
    ss = (rem - mm) * 60
    if ss >= 59.95:
        ss, mm = 0.0, mm + 1
    if mm == 60:
        mm, hh = 0, (hh + 1) % 24
    return f"{hh:02d}h{mm:02d}m{ss:04.1f}s"


def dms(dec_deg: float) -> str:
    sign = "-" if dec_deg < 0 else "+"
    d = abs(dec_deg)
    dd, rem = int(d), (d - int(d)) * 60
    mm = int(rem)
    ss = (rem - mm) * 60
    if ss >= 59.5:
        ss, mm = 0.0, mm + 1
    if mm == 60:
        mm, dd = 0, dd + 1
    return f"{sign}{dd:02d}d{mm:02d}m{ss:02.0f}s"


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {fraction * 100:3.0f}%"


def _exposure(status: dict, camera: str) -> dict | None:
    """The exposure under way on ``camera`` if the status reports one:
    ``status["cameras"][camera]`` with ``exptime`` and either ``elapsed_s`` or
    ``started`` (simulated ISO time), possibly nested under ``exposure``."""
    cams = status.get("cameras")
    if not isinstance(cams, dict):
        return None
    info = cams.get(camera)
    if not isinstance(info, dict):
        return None
    info = info.get("exposure", info) if isinstance(info.get("exposure", info), dict) else info
    exptime = info.get("exptime")
    if not isinstance(exptime, (int, float)) or exptime <= 0:
        return None
    elapsed = info.get("elapsed_s")
    if not isinstance(elapsed, (int, float)):
        started, now = _time(info.get("started")), _time(status.get("time"))
        if started is None or now is None:
            return None
        elapsed = (now - started).total_seconds()
    return {"exptime": float(exptime), "elapsed": max(0.0, float(elapsed)),
            "image_type": info.get("image_type", "")}


def render_status(s: dict) -> str:
    lines = []
    state = s.get("state", "?")
    since, now = _time(s.get("since")), _time(s.get("time"))
    held = ""
    if since and now:
        held = f" ({duration((now - since).total_seconds())})"
    speed = s.get("speed")
    speed_text = f", speed x{speed:g}" if isinstance(speed, (int, float)) and speed != 1 else ""
    lines.append(f"{s.get('unit', 'unit')}: {state.upper()} since {_short(s.get('since'))}{held}")
    lines.append(f"  time      {_short(s.get('time'))} UTC (simulated{speed_text})" if speed_text
                 else f"  time      {_short(s.get('time'))} UTC")
    hold = s.get("hold")
    if hold:
        lines.append(f"  hold      {hold}" + ("  (unpark to lift)" if hold == "park" else
                                              "  (resume to lift)" if hold == "pause" else ""))
    target = s.get("target")
    ob = s.get("observation") or {}
    if target:
        extra = ""
        if ob:
            extra = (f"  observation {ob.get('id', '?')}: {ob.get('frames', 0)} of {ob.get('min_nexp', '?')} "
                     f"rounds, set {ob.get('set', 0)}")
        lines.append(f"  target    {target}{extra}")
    else:
        lines.append("  target    none")
    if s.get("requested_field"):
        lines.append(f"  requested {s['requested_field']} (observe command)")
    m = s.get("mount") or {}
    if m:
        where = ""
        if isinstance(m.get("ra_deg"), (int, float)) and isinstance(m.get("dec_deg"), (int, float)):
            where = f"  RA {hms(m['ra_deg'])}  Dec {dms(m['dec_deg'])}"
        flags = []
        if m.get("tracking") is not None:
            flags.append("tracking" if m.get("tracking") else "not tracking")
        if m.get("parked") is not None:
            flags.append("parked" if m.get("parked") else "not parked")
        lines.append(f"  mount     {m.get('state') or '?'}{where}" + (f"  ({', '.join(flags)})" if flags else ""))
    actors = s.get("actors") or []
    for a in actors:
        if a.get("role") != "camera":
            continue
        health = "FAILED" if a.get("failed") else ("ready" if a.get("ready") else "starting")
        exp = _exposure(s, a["name"])
        if exp:
            kind = f"{exp['image_type']} " if exp["image_type"] else ""
            detail = (f"{progress_bar(exp['elapsed'] / exp['exptime'])}  {kind}"
                      f"{min(exp['elapsed'], exp['exptime']):.0f}/{exp['exptime']:.0f} s")
        else:
            detail = "idle" if health == "ready" else ""
        lines.append(f"  camera    {a['name']:<8} {health:<8} {detail}".rstrip())
    for name, dev in (s.get("devices") or {}).items():
        if isinstance(dev, dict):
            summary = ", ".join(f"{k} {v}" for k, v in dev.items() if isinstance(v, (str, int, float, bool)))
            lines.append(f"  {name:<9} {summary}"[:120])
    safety = s.get("safety")
    if safety is None:
        lines.append("  safety    no verdict yet")
    else:
        sun = safety.get("sun_alt_deg")
        sun_text = f"  (sun {sun:+.1f} deg)" if isinstance(sun, (int, float)) else ""
        if safety.get("safe"):
            lines.append(f"  safety    SAFE{sun_text}")
        else:
            reasons = safety.get("reasons") or ["no reason given"]
            lines.append(f"  safety    UNSAFE{sun_text}")
            lines.extend(f"              - {r}" for r in reasons)
    decision = s.get("last_decision")
    if decision:
        lines.append(f"  decision  {decision.get('reason', '')}  ({_short(decision.get('time'))})")
    night = s.get("night") or {}
    if night:
        lines.append(f"  night     {night.get('date', '?')}: dark {_short(night.get('dark_start'))[11:16]}"
                     f" to {_short(night.get('dark_end'))[11:16]} UTC, nights done {night.get('nights_done', 0)}")
    restarted = [a for a in actors if a.get("restarts") or a.get("failed")]
    if restarted:
        parts = []
        for a in restarted:
            text = f"{a['name']} {a.get('restarts', 0)}"
            if a.get("failed"):
                text += " (FAILED)"
            parts.append(text)
        lines.append("  restarts  " + ", ".join(parts))
    elif actors:
        lines.append(f"  restarts  none ({len(actors)} actors)")
    if s.get("failure"):
        lines.append(f"  FAILURE   {s['failure']}")
    return "\n".join(lines)


def render_event(e: dict) -> str:
    return f"{e.get('id', ''):>6}  {_short(e.get('time'))}  {e.get('kind', ''):<11} {e.get('message', '')}"


def render_events(result: dict) -> str:
    events = result.get("events") or []
    if not events:
        return "no events"
    return "\n".join(render_event(e) for e in events)


def render_why(result: dict) -> str:
    d = result.get("decision")
    if not d:
        return "no scheduling decision yet"
    lines = [f"decision {d.get('id', '?')} at {_short(d.get('time'))}: "
             f"{d.get('winner') or 'no field'}", f"  {d.get('reason', '')}"]
    if d.get("requested"):
        lines.append(f"  requested: {json.dumps(d['requested'], default=str)}")
    if d.get("fields_error"):
        lines.append(f"  fields file: {d['fields_error']}")
    cands = sorted(d.get("candidates") or [], key=lambda c: (-(c.get("merit") or 0), c.get("name", "")))
    if cands:
        width = max(16, *(len(str(c.get("name", "?"))) for c in cands))
        lines.append(f"  {'field':<{width}} {'merit':>8} {'alt':>6}  vetoes / notes")
        for c in cands:
            mark = "*" if c.get("name") == d.get("winner") else " "
            why = "; ".join(list(c.get("vetoes") or []) + [f"({n})" for n in c.get("notes") or []])
            alt = c.get("altitude_deg")
            alt_text = f"{alt:6.1f}" if isinstance(alt, (int, float)) else f"{'?':>6}"
            lines.append(f"{mark} {c.get('name', '?'):<{width}} {c.get('merit') or 0:8.1f} {alt_text}  {why}".rstrip())
    return "\n".join(lines)


def render_fields(result: dict) -> str:
    lines = [f"{'field':<16} {'RA':>12} {'Dec':>11} {'priority':>9}"]
    for f in result.get("fields") or []:
        lines.append(f"{f['name']:<16} {hms(f['ra_deg']):>12} {dms(f['dec_deg']):>11} {f.get('priority', 0):9.0f}")
    return "\n".join(lines)


def render_config(result: dict) -> str:
    value = result.get("value")
    if isinstance(value, (dict, list)):
        text = json.dumps(value, indent=2, default=str)
    else:
        text = json.dumps(value, default=str)
    live = "live" if result.get("live") else "restart needed to change"
    return f"{result.get('key')} = {text}  ({live})"


def render_reply(command: str, result: dict) -> str:
    """Text for a successful command."""
    if command == "status":
        return render_status(result)
    if command == "events":
        return render_events(result)
    if command == "why":
        return render_why(result)
    if command == "fields":
        return render_fields(result)
    if command == "config-get":
        return render_config(result)
    if command == "config-set":
        return (f"{result.get('key')}: {json.dumps(result.get('previous'))} -> {json.dumps(result.get('value'))}"
                f" (live now; kept in {result.get('persisted')})")
    if command == "stop":
        if result.get("already"):
            return f"already stopping ({result.get('reason', '')})"
        return "stopping: the unit parks, closes and exits"
    details = ", ".join(f"{k} {_word(v)}" for k, v in result.items() if not isinstance(v, (dict, list)))
    lines = [f"{command}: ok" + (f" ({details})" if details else "")]
    for k, v in result.items():
        if isinstance(v, dict):
            lines += [f"  {k}: {name}: {_word(value)}" for name, value in v.items()]
        elif isinstance(v, list):
            lines += [f"  {k}: {_word(value)}" for value in v]
    return "\n".join(lines)


def _word(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
