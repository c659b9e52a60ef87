"""The configured walls: each provider's settings with its protocol module and parsed networks."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..providers.base import Network, WallProtocol
from ..providers.registry import PROTOCOLS
from ..settings import Provider, Settings, networks


@dataclass(frozen=True, slots=True)
class Wall:
    config: Provider
    protocol: WallProtocol
    allowed: tuple[Network, ...]
    max_amount: Decimal | None


@dataclass(frozen=True, slots=True)
class Walls:
    by_name: dict[str, Wall]
    trusted_proxies: tuple[Network, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Walls:
        return cls(
            by_name={
                p.name: Wall(p, PROTOCOLS[p.protocol], networks(p.allowed_ips), p.amount_limit())
                for p in settings.providers
            },
            trusted_proxies=networks(settings.server.trusted_proxies),
        )
