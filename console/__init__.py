"""The operator's console: ``python -m console`` (or ``panoptes-console``).

Talks to a running unit over its control socket ($PANDIR/run/control.sock);
imports neither Thespian nor astropy, so it starts in a few tens of
milliseconds. See docs/console.md."""
