# generated from _async by scripts/gen_sync.py, do not edit
"""The sync SDK, generated from ``corral.sdk._async`` by scripts/gen_sync.py."""
