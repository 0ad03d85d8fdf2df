"""The transport: the wire format, the publisher, the subscriber and CURVE keys.

Needs only pyzmq (no torch, OpenCV or numpy), so a program that only subscribes installs
the base package: `from stream.transport import Subscriber`.
"""

from stream.errors import UserError

from .subscribe import DEFAULT_ENDPOINT, HandshakeError, Subscriber, format_message

__all__ = ["DEFAULT_ENDPOINT", "HandshakeError", "Subscriber", "UserError", "format_message"]
