"""Probe-set builders: the procedural set, the real-photo composite set and its ingredients (fetched
by checksum from Debian and PyPI packages), the VOC smoke set, the Broden writer and contact sheets.

They make data; the readers that every dissection uses stay in `ndjax.data`.
"""
