from aiohttp.test_utils import TestClient

from tests.helpers import AUTH, medioot, unique


async def test_credit_then_read_back(client: TestClient) -> None:  # type: ignore[type-arg]
    user = unique()
    resp = await client.get("/postbacks/medioot", params=medioot(user, unique("t"), "10.50"))
    assert (resp.status, await resp.text()) == (200, "OK")
    resp = await client.get(f"/v1/wallets/{user}", headers=AUTH)
    assert (await resp.json())["balance"] == "10.50"
