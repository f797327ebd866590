"""Probe data: the Broden format reader/writer and probe-set generators."""
