"""What an operator needs for a wall: the URL to paste into its dashboard (`postback-ledger
setup`), and a postback built as the wall would send it (`postback-ledger simulate`).

Pure: the command line (`service/__main__.py`) prints the lines and sends the request.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlencode

from .. import settings
from . import profile
from .base import md5_hex
from .profile import Built, Setup
from .registry import PROTOCOLS

# The walls with a module of their own (README, Walls).
SEED_SETUP: dict[str, Setup] = {
    "inbrain": Setup(
        query="",
        secret_from="inBrain publisher dashboard, Callback tab: the Callback Secret",
        notes=(
            "Set both the success and the failure callback URL to this URL. inBrain does not"
            " publish its servers' addresses: ask inBrain and set allowed_ips; set max_amount."
        ),
    ),
    "adgate_receipts": Setup(
        query=(
            "conversion_id={conversion_id}&s1={s1}&points={points}&payout={payout}"
            "&shm_upload_id={shm_upload_id}&shm_upload_offer_id={shm_upload_offer_id}"
            "&shm_offer_id={shm_offer_id}&shm_offer_name={shm_offer_name}"
            "&shm_status={shm_status}&shm_event_id={shm_event_id}"
            "&shm_reason_text={shm_reason_text}&shm_datetime={shm_datetime}&state={state}"
            "&session_ip={session_ip}&country={country}"
        ),
        secret_from=(
            'none: the URL token is yours (python3 -c "import secrets;'
            ' print(secrets.token_urlsafe(24))") in url_token'
        ),
        notes=(
            "AdGate dashboard, Postbacks, Offer-Specific Postbacks: offer 397622 (Shopper"
            " Marketing). There is no signature: keep allowed_ips and set max_amount."
        ),
    ),
}
SEED_ALLOWED: dict[str, list[str]] = {"adgate_receipts": ["52.42.57.125"]}


def _compiled(provider: settings.Provider, server: settings.Server) -> profile.Compiled | None:
    if provider.protocol in PROTOCOLS:
        return None
    return profile.profile_of(provider, server, provider.name)


TOKEN_PLACEHOLDER = "{url_token}"


def setup_lines(
    provider: settings.Provider, server: settings.Server, base_url: str, *, show_token: bool = True
) -> list[str]:
    """The URL to paste first, then where the secret comes from, the addresses, the notes.
    Without `show_token`, the URL holds TOKEN_PLACEHOLDER where its URL token goes."""
    compiled = _compiled(provider, server)
    if compiled is None:
        setup = SEED_SETUP[provider.protocol]
        allowed = provider.allowed_ips or SEED_ALLOWED.get(provider.protocol, [])
        reversal_endpoint = False
    else:
        setup = compiled.profile.setup
        allowed = provider.allowed_ips or compiled.profile.allowed_ips
        reversal_endpoint = compiled.profile.reversal_endpoint
    tokens = provider.token_list()
    token = (tokens[0] if show_token else TOKEN_PLACEHOLDER) if tokens else ""
    path = f"{base_url.rstrip('/')}/postbacks/{provider.name}" + (f"/{token}" if token else "")
    query = f"?{setup.query}" if setup.query else ""
    lines = [path + query]
    if reversal_endpoint:
        lines.append(f"reversals: {path}/reversal{query}")
    lines.append(f"secret: {setup.secret_from or 'none (the wall does not sign)'}")
    if allowed:
        lines.append(f"allowed_ips: {', '.join(allowed)}")
    else:
        lines.append("allowed_ips: none published: ask the wall for its servers' addresses")
    if setup.notes:
        lines.append(f"notes: {setup.notes}")
    return lines


def simulated(
    provider: settings.Provider,
    server: settings.Server,
    *,
    user: str,
    amount: str,
    transaction: str = "",
    reverse: bool = False,
) -> Built:
    """The postback the provider's wall would send, signed with its first secret."""
    transaction = transaction or f"sim-{uuid.uuid4().hex[:12]}"
    secrets = provider.secret_list()
    secret = secrets[0] if secrets else ""
    tokens = provider.token_list()
    token = tokens[0] if tokens else ""
    compiled = _compiled(provider, server)
    if compiled is not None:
        return profile.build(
            compiled,
            name=provider.name,
            secret=secret,
            user=user,
            amount=amount,
            transaction=transaction,
            reverse=reverse,
            token=token,
            public_url=server.public_url,
        )
    path = f"/postbacks/{provider.name}" + (f"/{token}" if token else "")
    if provider.protocol == "inbrain":
        body = {
            "Sig": md5_hex(user, transaction, secret),
            "PanelistId": user,
            "RewardId": transaction,
            "Reward": amount,
            "RewardType": "offer_completion_reversed" if reverse else "offer_completed",
        }
        return Built("POST", path, {}, json.dumps(body).encode(), "application/json")
    query = urlencode(
        {
            "s1": user,
            "conversion_id": transaction,
            "points": amount,
            "shm_event_id": f"{transaction}-{'rejected' if reverse else 'approved'}",
            "shm_upload_offer_id": transaction,
            "shm_status": "APPROVED",
            "state": "rejected" if reverse else "approved",
        }
    )
    return Built("POST", f"{path}?{query}", {}, b"", "")
