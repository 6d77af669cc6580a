"""Bus backends behind one interface: ``embedded`` on one machine, ``kafka``
on a cluster.  :func:`open_bus` picks one from a URL."""

from __future__ import annotations

from ..errors import BusError
from .base import Bus, Consumer, Delivered, Producer, Record, TopicPartition, TopicSpec

__all__ = [
    "Bus",
    "Consumer",
    "Delivered",
    "Producer",
    "Record",
    "TopicPartition",
    "TopicSpec",
    "open_bus",
]

SCHEMES = ("embedded", "kafka")


def open_bus(url: str) -> Bus:
    """A bus from ``embedded://PATH`` or ``kafka://HOST:PORT[,HOST:PORT]``."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise BusError(
            f"bus URL {url!r} is not understood; use embedded://PATH "
            "(a folder on this machine) or kafka://HOST:PORT[,HOST:PORT]"
        )
    if scheme == "embedded":
        from .embedded import EmbeddedBus

        return EmbeddedBus.from_url(url)
    from .kafka import KafkaBus

    return KafkaBus.from_url(url)
