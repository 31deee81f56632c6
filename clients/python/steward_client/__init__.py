"""Steward's Python client: :class:`Client` (blocking) and :class:`AsyncClient`."""

from steward_client.client import AsyncClient, Client
from steward_client.errors import StewardError, TransportError
from steward_client.weights import read_safetensors

__all__ = ["AsyncClient", "Client", "StewardError", "TransportError", "read_safetensors"]
