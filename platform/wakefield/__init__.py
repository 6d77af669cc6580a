"""wakefield: event-driven AI orchestration for particle accelerators."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wakefield")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
