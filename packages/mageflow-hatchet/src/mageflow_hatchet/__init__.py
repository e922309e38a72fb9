"""MageFlow's Hatchet backend. ``hatchet_sdk`` is imported only when the backend is used."""
