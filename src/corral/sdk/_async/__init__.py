"""The async core of the SDK; ``corral.sdk._sync`` is generated from it by scripts/gen_sync.py."""
