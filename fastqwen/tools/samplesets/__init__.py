"""Parity sample sets: settings, the run that writes WAVs and summary, and their README."""
