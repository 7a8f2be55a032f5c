"""HTTP layer: parse, authenticate, serialize. No decisions (those are the manager's)."""
