"""The read-only web side: the page, /metrics, /status.json, /healthz and `monitor report`."""
