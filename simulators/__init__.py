"""Simulated devices: drop-in drivers that run on the shared simulated clock."""
