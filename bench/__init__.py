"""wakefield's benchmark suite: `make bench` (or `python -m bench [SUITE ...]`)."""
