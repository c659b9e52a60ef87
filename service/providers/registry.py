"""Protocol name -> module. Adding a wall is a profile (`service/profiles/<name>.toml`, see
`profile.py`), or one module of the shape in `base.py` and one line here."""

from __future__ import annotations

from .. import settings
from . import adgate_receipts, inbrain, profile
from .base import WallProtocol

PROTOCOLS: dict[str, WallProtocol] = {
    "inbrain": inbrain,
    "adgate_receipts": adgate_receipts,
}


def protocol_names() -> tuple[str, ...]:
    """Every protocol a provider may name: the modules, `custom`, the built-in profiles."""
    builtins = tuple(n for n in profile.builtin_names() if n not in PROTOCOLS)
    return (*PROTOCOLS, profile.CUSTOM, *builtins)


def protocol_for(provider: settings.Provider, server: settings.Server) -> WallProtocol:
    """The protocol of a provider whose settings were validated."""
    module = PROTOCOLS.get(provider.protocol)
    if module is not None:
        return module
    return profile.ProfileWall.of(
        profile.profile_of(provider, server, provider.name), server.public_url
    )
