"""Wire compatibility with other sandbox services' SDKs (e2b/), served on corral's own listener.

Like ``server/``, a compat layer only parses, authenticates and serializes: every action goes
through the manager.
"""
