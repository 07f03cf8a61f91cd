"""WebSocket sessions in process: a wsproto client against an AsgiConnection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.support.asgi_serve import Client, request, serve_asgi

pytestmark = pytest.mark.usefixtures("connection_start")

Scope = dict[str, Any]


class WsClient:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []

    async def handshake(self, subprotocols: list[str] | None = None) -> Any:
        await self.client.send(self.ws.send(Request(host="t", target="/ws",
                                                    subprotocols=subprotocols or [])))
        return await self.event()

    async def event(self) -> Any:
        while not self.pending:
            data = await self.client.recv()
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def send(self, event: Any) -> None:
        await self.client.send(self.ws.send(event))


async def echo(scope: Scope, receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket" and scope["scheme"] == "ws"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept", "subprotocol": (scope["subprotocols"] or [None])[0]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "close please":
            await send({"type": "websocket.close", "code": 4000, "reason": "asked"})
            return
        await send({"type": "websocket.send", **{k: v for k, v in message.items()
                                                 if k in ("text", "bytes")}})


def test_echo_text_binary_fragments_ping_and_client_close() -> None:
    async def client(c: Client) -> None:
        ws = WsClient(c)
        accept = await ws.handshake(["chat"])
        assert isinstance(accept, AcceptConnection) and accept.subprotocol == "chat"
        await ws.send(TextMessage(data="héllo"))
        assert (await ws.event()).data == "héllo"
        await ws.send(BytesMessage(data=b"\x00\xff"))
        assert (await ws.event()).data == b"\x00\xff"
        await ws.send(TextMessage(data="frag", message_finished=False))
        await ws.send(TextMessage(data="mented", message_finished=True))
        assert (await ws.event()).data == "fragmented"
        await ws.send(Ping(payload=b"p"))
        pong = await ws.event()
        assert isinstance(pong, Pong) and pong.payload == b"p"
        await ws.send(CloseConnection(code=1000))
        closed = await ws.event()
        assert isinstance(closed, CloseConnection) and closed.code == 1000
        assert await c.read_to_eof() == b""

    served = asyncio.run(serve_asgi(echo, client))
    assert [r.status_code for r in served.side.accessed] == [101]
    assert served.side.ended_handed_back == [False]  # a WebSocket never goes back


def test_app_close_code_reaches_the_client() -> None:
    async def client(c: Client) -> None:
        ws = WsClient(c)
        await ws.handshake()
        await ws.send(TextMessage(data="close please"))
        closed = await ws.event()
        assert isinstance(closed, CloseConnection) and (closed.code, closed.reason) == (
            4000, "asked")
        await ws.send(closed.response())
        assert await c.read_to_eof() == b""

    asyncio.run(serve_asgi(echo, client))


def test_closing_before_accept_is_a_403_and_denial_responses_pass_through() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/ws":
            await send({"type": "websocket.close"})
        else:
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": [(b"content-length", b"4")]})
            await send({"type": "websocket.http.response.body", "body": b"nope"})

    async def refused(c: Client) -> None:
        ws = WsClient(c)
        answer = await ws.handshake()
        assert isinstance(answer, RejectConnection) and answer.status_code == 403

    async def denied(c: Client) -> None:
        ws = WsClient(c)
        await c.send(ws.ws.send(Request(host="t", target="/deny")))
        answer = await ws.event()
        assert isinstance(answer, RejectConnection) and answer.status_code == 401
        data = await ws.event()
        assert isinstance(data, RejectData) and data.data == b"nope"

    assert asyncio.run(serve_asgi(app, refused)).side.accessed[0].status_code == 403
    assert asyncio.run(serve_asgi(app, denied)).side.accessed[0].status_code == 401


def test_bad_handshake_is_a_400() -> None:
    async def client(c: Client) -> None:
        # Upgrade asked, but no Sec-WebSocket-Key / Version.
        await c.send(request("/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"}))
        assert (await c.response()).status == 400

    served = asyncio.run(serve_asgi(echo, client))
    assert "Invalid WebSocket handshake" in served.log.at("warning")[0]


def test_message_over_the_size_limit_closes_with_1009() -> None:
    got: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def client(c: Client) -> None:
        ws = WsClient(c)
        await ws.handshake()
        await ws.send(BytesMessage(data=b"x" * 600, message_finished=False))
        await ws.send(BytesMessage(data=b"x" * 600, message_finished=True))
        closed = await ws.event()
        assert isinstance(closed, CloseConnection) and closed.code == 1009
        await ws.send(closed.response())

    asyncio.run(serve_asgi(app, client, ws_max_message=1000))
    assert got == [{"type": "websocket.disconnect", "code": 1009, "reason": ""}]


def test_shutdown_closes_with_1001_and_the_app_sees_the_disconnect() -> None:
    got: list[dict[str, Any]] = []
    receivers: list[Any] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        receivers.append(receive)  # a bound method of the session
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def client(c: Client) -> None:
        ws = WsClient(c)
        await ws.handshake()
        receivers[0].__self__.shutdown()  # what the worker does once graceful_timeout passed
        closed = await ws.event()
        assert isinstance(closed, CloseConnection) and closed.code == 1001
        await ws.send(closed.response())

    asyncio.run(serve_asgi(app, client))
    assert got == [{"type": "websocket.disconnect", "code": 1001, "reason": ""}]


def test_send_after_the_client_went_raises_oserror() -> None:
    outcome: list[BaseException] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            outcome.append(exc)

    async def client(c: Client) -> None:
        ws = WsClient(c)
        await ws.handshake()
        c.sock.close()

    asyncio.run(serve_asgi(app, client))
    assert outcome

