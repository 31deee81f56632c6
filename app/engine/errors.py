"""Errors the engine raises about its inputs."""

from __future__ import annotations


class TensorError(ValueError):
    """A tensor set that does not describe the model. ``loc`` names the tensor."""

    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(f"{loc}: {msg}")
        self.loc = loc
        self.msg = msg
