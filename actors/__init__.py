"""Thespian actors: each owns one driver (or one store) and keeps its message
loop free; long work is started, then polled with wakeups."""
