"""The HTTP gateway and web dashboard: ``python -m gateway`` (or
``panoptes-gateway``). A token-protected JSON API and a static dashboard in
front of a unit's control socket; loopback only unless told otherwise. See
docs/service.md."""
