"""Pilot runs: simulated participants through the real flow (HTTP pages + chat websocket)."""
