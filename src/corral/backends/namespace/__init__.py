"""The namespace backend (bubblewrap + user namespace + overlayfs + cgroups + netns + seccomp); see backend.py."""
