"""Pure domain code of the unit: clock, configuration, astronomy, scheduling,
imaging and storage. Nothing here imports Thespian, so all of it can be
tested without an actor system."""

__version__ = "0.1.0"
