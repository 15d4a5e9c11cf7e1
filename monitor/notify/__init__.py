"""Notifications: render an outbox payload per channel (render), send it (channels), and deliver the outbox
with retries and a record of every attempt (deliver). Import the module you need: apprise is only imported
by channels, when a notifier is actually configured."""
