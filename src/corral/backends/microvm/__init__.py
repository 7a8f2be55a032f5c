"""The microVM backend: QEMU ``-M microvm``, Debian's cloud kernel, snapshot restore (see backend.py)."""
