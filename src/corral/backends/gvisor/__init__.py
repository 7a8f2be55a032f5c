"""The gVisor backend: runsc (ptrace platform) on an OCI bundle of the template (see backend.py)."""
