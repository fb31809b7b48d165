"""Drivers for real hardware: plain classes, no actor code (see docs/drivers.md)."""
