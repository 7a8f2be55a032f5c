"""corral's benchmarks: `make bench` (python -m bench). Each figure beside its floor from the same run."""
