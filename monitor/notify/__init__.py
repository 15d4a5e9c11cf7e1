"""Notifications: render an outbox payload per channel (render), send it (channels), and deliver the outbox
with retries and a record of every attempt (deliver). Names are re-exported lazily, so importing this
package stays cheap and apprise is only imported when a notifier is actually configured."""
from __future__ import annotations

_EXPORTS = {
    "Message": "render", "render": "render",
    "Channel": "channels", "SendResult": "channels", "channel_for": "channels", "validate": "channels",
    "LogChannel": "channels", "SlackChannel": "channels", "EmailChannel": "channels",
    "GenericChannel": "channels",
    "DeliveryReport": "deliver", "deliver_due": "deliver", "send_test": "deliver",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
