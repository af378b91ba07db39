"""Copernica's REST API, and recovering missed events from its logfiles."""
