"""The Redis transport, hardened against junk on a run queue.

Anyone who can reach the broker can push bytes onto a queue. Stock kombu
decodes each message inside the worker's event loop, so a message that is not
JSON, whose body is not valid base64, or that is not an envelope at all
raised there and stopped the worker ("Unrecoverable error"). Here such a
message is logged by its kind of fault (never its bytes, which may be anything)
and dropped; every well-formed envelope goes on to Celery, which checks the
task itself, and then to the pipeline, which checks the requester's signature.
"""

from __future__ import annotations

import binascii
import json
import logging
from typing import Any

from kombu.transport import redis

__all__ = ["Transport"]

log = logging.getLogger("opal.worker")


def _envelope_fault(message: Any) -> str | None:
    """Why ``message`` is not a kombu envelope kombu can decode, or None."""
    if not isinstance(message, dict):
        return f"a JSON {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return "no properties object"
    if not isinstance(properties.get("delivery_tag"), (str, int)):
        return "no delivery tag"
    if not isinstance(message.get("headers", {}), dict):
        return "headers that are not an object"
    body = message.get("body")
    encoding = properties.get("body_encoding")
    if encoding not in (None, "base64"):
        return "an unknown body encoding"
    if encoding == "base64":
        if not isinstance(body, str):
            return "a base64 body that is not a string"
        try:
            binascii.a2b_base64(body.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError):
            return "a body that is not valid base64"
    return None


try:  # redis-py >= 7: without it, every new connection reads redis-py's metadata from disk for its version
    import redis as _redis_py
    from redis.driver_info import DriverInfo

    _DRIVER: Any = DriverInfo(lib_version=_redis_py.__version__)
except (ImportError, AttributeError):  # an older redis-py: its own default
    _DRIVER = None


class Channel(redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        params = super()._connparams(asynchronous)  # type: ignore[no-untyped-call]
        if _DRIVER is not None:
            params.setdefault("driver_info", _DRIVER)
        return params

    def _brpop_read(self, **options: Any) -> bool:
        try:
            result: bool = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except (json.JSONDecodeError, UnicodeDecodeError):
            # The message is already off the queue: nothing else to undo.
            log.warning("dropped a broker message that is not JSON")
            return True
        return result


class Transport(redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        fault = _envelope_fault(message)
        if fault is not None:
            log.warning("dropped a malformed broker message on %s: %s", queue, fault)
            return
        super()._deliver(message, queue)  # type: ignore[no-untyped-call]
