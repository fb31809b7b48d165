"""What every serial-protocol driver needs from its port: opening it (a device
path or a pyserial URL such as socket://host:port), closing it quickly, and
one error type that says how an exchange failed."""
from __future__ import annotations

import socket

import serial

try:
    import termios
except ImportError:   # not on Windows
    termios = None

# What a port can raise mid-exchange: pyserial's reset_input_buffer() calls
# termios.tcflush(), which raises termios.error (not an OSError) once the
# device has gone (a USB adapter unplugged, a pty whose other end closed).
LINK_ERRORS = (serial.SerialException, OSError) + ((termios.error,) if termios is not None else ())


class WireError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # "link", "none", "partial" or "garbage"


def open_serial(port: str, baudrate: int, timeout_s: float, what: str):
    """Open ``port`` with a timeout on every read and write; WireError("link") if it cannot."""
    try:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=timeout_s, write_timeout=timeout_s)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise WireError("link", f"cannot open the {what} port {port}: {exc}") from None


def close_serial(ser) -> None:
    """Close a pyserial port quickly: for socket:// URLs pyserial's close()
    sleeps 0.3 s "for quick reconnects", so close the socket ourselves."""
    if ser is None:
        return
    try:
        sock = getattr(ser, "_socket", None)
        if sock is not None and getattr(ser, "is_open", False):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            ser._socket = None
            ser.is_open = False
        else:
            ser.close()
    except LINK_ERRORS:
        pass
