"""The HTTP gateway: a token-protected JSON API and a web dashboard in front
of a unit's control socket.

- Every ``/api/`` request needs ``Authorization: Bearer <token>`` (compared
  in constant time). The dashboard's static files (``/``, ``/static/...``)
  hold no data and are served without it: the page asks for the token (or
  takes it from the URL fragment ``#token=...``, which browsers never send to
  the server) and sends it with every API call.
- Commands go through observatory/control.py, the same validation as the
  console, then over ``$PANDIR/run/control.sock`` to run_unit.py.
- The timeline and the latest frame are read from the unit's SQLite store
  (read-only) and its FITS files.

Standard library only (http.server); numpy (and astropy for FITS, on the
first frame) for the thumbnail.
"""
from __future__ import annotations

import hmac
import json
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from observatory.control import Connection, ControlError, check_request, socket_path

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon"}
CODE_STATUS = {"bad_request": 400, "refused": 409, "timeout": 504, "unavailable": 503, "internal": 500}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
GET_ROUTES = ("/api/status", "/api/events", "/api/why", "/api/fields", "/api/timeline", "/api/frame/latest",
              "/api/frame/latest.png")
POST_ROUTES = ("/api/command",)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = ""):
        super().__init__(message)
        self.status, self.code = status, code


def _unix(text: str | None) -> float | None:
    """The unit's ISO times are UTC without a zone."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


class Gateway:
    """What the handlers share: the unit's PANDIR, the token, caches."""

    def __init__(self, pandir: str | os.PathLike, token: str, timeout: float = 10.0):
        self.pandir = Path(pandir)
        self.token = token.encode()
        self.timeout = timeout
        self.thumb_lock = threading.Lock()
        self.thumb_cache: tuple | None = None       # (path, mtime_ns, png)

    def authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            hmac.compare_digest(b"x" * len(self.token), self.token)     # same work either way
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.token)

    # -- the control socket ------------------------------------------------

    def control(self, command: str, args: dict | None = None) -> dict:
        """The result of a command, or ApiError with an HTTP status."""
        request = {"command": command, "args": args or {}}
        try:
            check_request(request)
        except ControlError as e:
            raise ApiError(400, str(e), "bad_request") from None
        try:
            with Connection(socket_path(self.pandir), self.timeout) as conn:
                reply = conn.request(command, args or {})
        except (FileNotFoundError, ConnectionRefusedError):
            raise ApiError(503, f"no unit running under PANDIR: {self.pandir}", "unavailable") from None
        except TimeoutError:
            raise ApiError(504, f"the unit did not answer within {self.timeout:g} s", "timeout") from None
        except (OSError, ValueError) as e:
            raise ApiError(502, f"control socket: {e}", "unavailable") from None
        if not reply.get("ok"):
            code = reply.get("code", "refused")
            raise ApiError(CODE_STATUS.get(code, 502), reply.get("error") or "refused", code)
        return reply.get("result", {})

    # -- the store -----------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = self.pandir / "db" / "unit.sqlite"
        if not db.exists():
            raise ApiError(404, f"no database yet under {self.pandir}", "unavailable")
        con = sqlite3.connect(db.as_uri() + "?mode=ro", uri=True, timeout=5)
        con.row_factory = sqlite3.Row
        return con

    def latest_frame(self) -> dict:
        con = self._db()
        try:
            rows = con.execute(
                "SELECT e.id, e.camera, e.image_type, e.path, e.start_time, e.exptime, e.n_stars, e.fwhm_px,"
                " o.field FROM exposures e LEFT JOIN observations o ON o.id = e.observation_id"
                " ORDER BY e.start_unix DESC, e.rowid DESC LIMIT 10").fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            con.close()
        for r in rows:
            if os.path.isfile(r["path"]):
                return dict(r)
        raise ApiError(404, "no frame yet", "unavailable")

    def frame_png(self, frame: dict) -> bytes:
        from gateway.thumbnail import thumbnail_png
        path = frame["path"]
        mtime = os.stat(path).st_mtime_ns
        with self.thumb_lock:
            if self.thumb_cache and self.thumb_cache[:2] == (path, mtime):
                return self.thumb_cache[2]
            try:
                png = thumbnail_png(path)
            except (OSError, ValueError) as e:
                raise ApiError(500, f"cannot read frame {path}: {e}", "internal") from None
            self.thumb_cache = (path, mtime, png)
            return png

    def timeline(self) -> dict:
        """Tonight's states, as segments: from two hours before dark to an
        hour after (from the unit's status), or the last 14 hours recorded."""
        status = None
        try:
            status = self.control("status")
        except ApiError:
            pass
        con = self._db()
        try:
            last = con.execute("SELECT MAX(time_unix) FROM events").fetchone()[0]
            night = (status or {}).get("night") or {}
            dark_start, dark_end = _unix(night.get("dark_start")), _unix(night.get("dark_end"))
            now = _unix((status or {}).get("time")) or last or time.time()
            if dark_start and dark_end:
                start, end = dark_start - 2 * 3600, dark_end + 3600
            else:
                end = now
                start = end - 14 * 3600
            before = con.execute("SELECT time_unix, data FROM events WHERE kind='state' AND time_unix < ?"
                                 " ORDER BY time_unix DESC LIMIT 1", (start,)).fetchone()
            rows = con.execute("SELECT time_unix, data FROM events WHERE kind='state' AND time_unix >= ?"
                               " AND time_unix <= ? ORDER BY time_unix, id", (start, end)).fetchall()
        except sqlite3.OperationalError:
            before, rows, now, start, end, dark_start, dark_end = None, [], time.time(), 0, 0, None, None
        finally:
            con.close()
        changes = ([(start, json.loads(before["data"] or "{}"))] if before else []) + \
                  [(r["time_unix"], json.loads(r["data"] or "{}")) for r in rows]
        segments = []
        for i, (t, data) in enumerate(changes):
            t_end = changes[i + 1][0] if i + 1 < len(changes) else min(now, end)
            if t_end > t:
                segments.append({"state": data.get("state"), "target": data.get("target"),
                                 "start_unix": t, "end_unix": t_end})
        return {"start_unix": start, "end_unix": end, "now_unix": now, "dark_start_unix": dark_start,
                "dark_end_unix": dark_end, "segments": segments}


class Handler(BaseHTTPRequestHandler):
    server_version = "panoptes-gateway"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 60
    gateway: Gateway = None     # set by make_server
    quiet = False

    # -- plumbing -------------------------------------------------------------

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, extra: dict | None = None) -> None:
        headers = {"Cache-Control": "no-store", **(extra or {})}
        self._send(status, json.dumps(obj, default=str).encode(), "application/json", headers)

    def _error(self, status: int, message: str, code: str = "", extra: dict | None = None) -> None:
        body = {"ok": False, "error": message}
        if code:
            body["code"] = code
        self._json(status, body, extra)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        try:
            if not path.startswith("/api/"):
                if method not in ("GET", "HEAD"):
                    raise ApiError(405, f"{method} is not allowed on {path}")
                return self._static(path)
            if not self.gateway.authorised(self.headers.get("Authorization")):
                return self._error(401, "missing or wrong token: send Authorization: Bearer <token>",
                                   "unauthorised", {"WWW-Authenticate": 'Bearer realm="panoptes"'})
            routes = GET_ROUTES if method in ("GET", "HEAD") else POST_ROUTES if method == "POST" else ()
            if path not in routes:
                allowed = [m for m, r in (("GET", GET_ROUTES), ("POST", POST_ROUTES)) if path in r]
                if allowed:
                    return self._error(405, f"{method} is not allowed on {path} (use {', '.join(allowed)})",
                                       "bad_request", {"Allow": ", ".join(allowed)})
                raise ApiError(404, f"no such endpoint: {method} {path}", "bad_request")
            getattr(self, "api_" + path[5:].replace("/", "_").replace(".", "_"))(parse_qs(url.query))
        except ApiError as e:
            self._error(e.status, str(e), e.code)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - one bad request must not end the server
            import traceback
            traceback.print_exc()
            self._error(500, f"internal error: {type(e).__name__}: {e}", "internal")

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def do_DELETE(self):
        self._route("DELETE")

    def do_PATCH(self):
        self._route("PATCH")

    # -- static files ------------------------------------------------------------

    def _static(self, path: str) -> None:
        name = "index.html" if path in ("/", "/index.html") else path[len("/static/"):] \
            if path.startswith("/static/") else None
        files = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}
        if name is None or name not in files:          # only the files that are there: no path tricks
            raise ApiError(404, f"not found: {path}")
        body = files[name].read_bytes()
        self._send(200, body, CONTENT_TYPES.get(files[name].suffix, "application/octet-stream"),
                   {"Cache-Control": "no-cache"})

    # -- the API -------------------------------------------------------------------

    @staticmethod
    def _int(query: dict, name: str) -> int | None:
        values = query.get(name)
        if not values or values[-1] == "":
            return None
        try:
            return int(values[-1])
        except ValueError:
            raise ApiError(400, f"{name} must be a whole number, got {values[-1]!r}", "bad_request") from None

    def api_status(self, query):
        self._json(200, self.gateway.control("status"))

    def api_events(self, query):
        args = {k: v for k, v in (("since", self._int(query, "since")), ("limit", self._int(query, "limit")))
                if v is not None}
        self._json(200, self.gateway.control("events", args))

    def api_why(self, query):
        self._json(200, self.gateway.control("why"))

    def api_fields(self, query):
        self._json(200, self.gateway.control("fields"))

    def api_timeline(self, query):
        self._json(200, self.gateway.timeline())

    def api_frame_latest(self, query):
        frame = self.gateway.latest_frame()
        frame["png"] = "/api/frame/latest.png"
        self._json(200, frame)

    def api_frame_latest_png(self, query):
        frame = self.gateway.latest_frame()
        png = self.gateway.frame_png(frame)
        self._send(200, png, "image/png", {"Cache-Control": "no-store", "X-Frame-Id": frame["id"],
                                           "X-Frame-Camera": frame["camera"], "X-Frame-Time": frame["start_time"]})

    def api_command(self, query):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            raise ApiError(415, "send the command as Content-Type: application/json", "bad_request")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "Content-Length is needed", "bad_request") from None
        if not 0 < length <= MAX_BODY:
            raise ApiError(413, f"the body must be 1..{MAX_BODY} bytes", "bad_request")
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not JSON: {e}", "bad_request") from None
        try:
            command, args = check_request(body)
        except ControlError as e:
            raise ApiError(400, str(e), "bad_request") from None
        self._json(200, {"ok": True, "command": command, "result": self.gateway.control(command, body.get("args"))})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer.server_bind looks up the host's FQDN, which can hang on a
        # machine without DNS; the name is not needed.
        import socketserver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Server6(_Server):
    import socket as _socket
    address_family = _socket.AF_INET6


def make_server(pandir, token: str, bind: str = "127.0.0.1", port: int = 0, quiet: bool = False,
                timeout: float = 10.0) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"gateway": Gateway(pandir, token, timeout), "quiet": quiet})
    cls = _Server6 if ":" in bind else _Server
    return cls((bind, port), handler)
