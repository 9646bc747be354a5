"""Runnable examples: a Lennard-Jones MD simulation and an analyst (used by ``trajstore demo``)."""
