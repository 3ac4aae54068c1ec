"""Serving through Triton Inference Server: the model repository written from our artifacts (`repository`).
Needs nothing beyond the field runtime; tritonclient only where a client talks to a server."""
