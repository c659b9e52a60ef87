"""The configured walls: each provider's settings with its protocol and parsed networks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from ..domain.events import Outcome
from ..providers.base import Answer, Inbound, Network, WallProtocol
from ..providers.profile import ProfileWall
from ..providers.registry import protocol_for
from ..settings import Provider, Settings, networks

Answering = Callable[[Outcome, str], Answer]


@dataclass(frozen=True, slots=True)
class Wall:
    config: Provider
    protocol: WallProtocol
    allowed: tuple[Network, ...]
    max_amount: Decimal | None
    tokens: tuple[str, ...] = ()
    reversal_endpoint: bool = False  # reversals arrive at /postbacks/<name>[/<token>]/reversal

    def answering(self, inbound: Inbound) -> Answering:
        """How to answer this request in the wall's convention."""
        if isinstance(self.protocol, ProfileWall):
            return self.protocol.answering(inbound)
        return self.protocol.answer


def wall(provider: Provider, settings: Settings) -> Wall:
    protocol = protocol_for(provider, settings.server)
    allowed = provider.allowed_ips
    reversal_endpoint = False
    if isinstance(protocol, ProfileWall):
        # The wall's published addresses, unless the provider names its own.
        allowed = allowed or protocol.compiled.profile.allowed_ips
        reversal_endpoint = protocol.reversal_endpoint
    return Wall(
        provider,
        protocol,
        networks(allowed),
        provider.amount_limit(),
        provider.token_list(),
        reversal_endpoint,
    )


@dataclass(frozen=True, slots=True)
class Walls:
    by_name: dict[str, Wall]
    trusted_proxies: tuple[Network, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Walls:
        return cls(
            by_name={p.name: wall(p, settings) for p in settings.providers},
            trusted_proxies=networks(settings.server.trusted_proxies),
        )
