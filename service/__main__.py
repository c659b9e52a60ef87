"""The postback ledger's commands: serve the walls and the internal API, apply the schema,
check or rebuild the ledger, take a checkpoint, set up or test a wall."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TextIO

from . import logs
from .db import Unavailable, connection
from .domain.chain import ChainKey
from .domain.checkpoint import Checkpoint, CheckpointError
from .embedded import EmbeddedError
from .settings import ConfigError, Provider, Settings, load
from .text import one_line

if TYPE_CHECKING:
    import asyncpg

    from .verify import Report

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postback-ledger",
        description=__doc__,
        epilog="Results go to stdout, logs to stderr. Exit codes: 0 done, 1 failed, 2 bad"
        " configuration or arguments, 3 (serve) a listener's address is in use.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, epilog: str | None = None) -> argparse.ArgumentParser:
        description = text[0].upper() + text[1:] + "."
        return commands.add_parser(name, help=text, description=description, epilog=epilog)

    serve = command(
        "serve",
        "run the HTTP server: the walls' postbacks, the internal API, the operator pages",
        epilog="SIGTERM or SIGINT stops it within server.shutdown_timeout (a second one at"
        " once); SIGHUP reloads the providers, API keys and server.trusted_proxies from the"
        " same file.",
    )
    serve.add_argument("--host", help="listen address (default: server.host)")
    serve.add_argument("--port", type=int, help="listen port (default: server.port)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes serving the port (default: 1)"
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    command("migrate", "apply schema.sql to the database (safe to repeat)")
    verify = command(
        "verify", "check the event log, its protections and its projections (read-only)"
    )
    verify.add_argument(
        "--checkpoint", metavar="FILE", help="also prove nothing before this checkpoint changed"
    )
    command("rebuild", "recompute the wallets and receipt offers from the event log, then verify")
    command(
        "checkpoint",
        "verify, then print a signed digest of every chain head (store it away from the database)",
    )
    setup = command(
        "setup", "print the postback URL to paste into a wall's dashboard, and what else to do"
    )
    setup.add_argument("provider", help="the provider's name")
    setup.add_argument(
        "--base-url", required=True, help="where the walls reach the service, e.g. https://host"
    )
    simulate = command("simulate", "send a postback built and signed as the provider's wall would")
    simulate.add_argument("provider", help="the provider's name")
    simulate.add_argument("--user", required=True, help="the user id")
    simulate.add_argument("--amount", required=True, help="the amount, e.g. 10.50")
    simulate.add_argument("--reverse", action="store_true", help="send the reversal")
    simulate.add_argument("--transaction", default="", help="the transaction id (default: new)")
    simulate.add_argument(
        "--url", help="the service's address (default: http://server.host:server.port)"
    )
    for each in commands.choices.values():
        each.add_argument("--config", help="TOML file (default: $LEDGER_CONFIG)")
    return parser


def _settings(path: str | None) -> Settings:
    path = path or os.environ.get("LEDGER_CONFIG")
    if not path:
        raise ConfigError("no configuration: pass --config PATH or set LEDGER_CONFIG")
    return load(path, os.environ)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Logs go to stderr, always: stdout holds a command's result and nothing else.
    logs.configure(stream=sys.stderr)
    try:
        settings = _settings(args.config)
        if args.command == "serve":
            if args.workers < 1:
                raise ConfigError("--workers must be at least 1")
            settings.chain_key()
            config = args.config or os.environ["LEDGER_CONFIG"]
            host = args.host or settings.server.host
            port = args.port or settings.server.port
            _check_ports(settings, port)
            if args.workers > 1:
                from .supervisor import supervise

                return supervise(settings, config, host, port, args.workers)
            from .serving import serve

            return serve(settings, host, port, worker=args.worker, config_path=config)
        if args.command == "setup":
            return _setup(settings, args)
        return asyncio.run(_COMMANDS[args.command](settings, args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CheckpointError as exc:
        where = getattr(args, "checkpoint", "")
        print(f"error: checkpoint {where}: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except (Unavailable, EmbeddedError) as exc:
        print(f"error: database: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _check_ports(settings: Settings, port: int) -> None:
    internal = settings.server.internal
    if internal is not None and internal.port == port:
        raise ConfigError(f"--port: {port} is server.internal.port; the listeners need two ports")


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from .app import database

    async with database(settings):
        pass
    print("migrate: schema.sql applied")
    return 0


def _checkpoint_file(path: str, key: ChainKey) -> Checkpoint:
    from .domain.checkpoint import decode

    try:
        with open(path, "rb") as file:
            checkpoint = decode(file.read())
    except OSError as exc:
        raise CheckpointError(f"cannot be read: {exc.strerror or exc}") from None
    checkpoint.check(key)
    return checkpoint


def _read_only(dsn: str) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """Opens a read-only connection to `dsn` each time it is called: verify's first, and the
    second it checks the projections on."""
    return functools.partial(connection.connect, dsn, server_settings=connection.READ_ONLY)


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from .app import database
    from .verify import verify

    key = ChainKey(settings.chain_key())
    checkpoint = _checkpoint_file(args.checkpoint, key) if args.checkpoint else None
    # Read-only: no migration (which would also switch a disabled trigger back on and hide it).
    async with database(settings, migrate=False) as dsns:
        connect = _read_only(dsns.runtime)
        conn = await connect()
        try:
            report = await verify(conn, key, checkpoint=checkpoint, connect=connect)
        finally:
            await conn.close()
    return _print_report(report)


async def _checkpoint(settings: Settings, args: argparse.Namespace) -> int:
    from .app import database
    from .domain.checkpoint import encode
    from .verify import take_checkpoint

    key = ChainKey(settings.chain_key())
    async with database(settings, migrate=False) as dsns:
        connect = _read_only(dsns.runtime)
        conn = await connect()
        try:
            report, checkpoint = await take_checkpoint(conn, key, connect=connect)
        finally:
            await conn.close()
    if not report.ok:
        _print_report(report, file=sys.stderr)
    if checkpoint is None:
        print("checkpoint: refused: a hash chain is broken", file=sys.stderr)
        return 1
    print(encode(checkpoint).decode())
    print(
        f"checkpoint: {checkpoint.events} events of {checkpoint.users} users, signed",
        file=sys.stderr,
    )
    return 0


async def _rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from .app import database
    from .rebuild import rebuild
    from .verify import verify

    key = ChainKey(settings.chain_key())
    # As the owner: rebuild empties the projections, which the runtime role may not do.
    async with database(settings) as dsns:
        role = await connection.role_of(dsns.runtime)
        conn = await connection.connect(dsns.owner)
        try:
            events, wallets, offers = await rebuild(conn, key)
            print(f"rebuild: {wallets} wallets and {offers} receipt offers from {events} events")
            report = await verify(
                conn, key, runtime_role=role, connect=lambda: connection.connect(dsns.owner)
            )
        finally:
            await conn.close()
    return _print_report(report)


def _print_report(report: Report, file: TextIO | None = None) -> int:
    file = file or sys.stdout
    for line in report.differences:
        print(line, file=file)
    print(report.summary(), file=file)
    return 0 if report.ok else 1


def _provider(settings: Settings, name: str) -> Provider:
    provider = settings.provider(name)
    if provider is None:
        names = ", ".join(p.name for p in settings.providers) or "none configured"
        raise ConfigError(f"no provider named {name!r} (providers: {names})")
    return provider


def _setup(settings: Settings, args: argparse.Namespace) -> int:
    from .providers.setup import setup_lines

    provider = _provider(settings, args.provider)
    for line in setup_lines(provider, settings.server, args.base_url):
        print(line)
    return 0


async def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    import aiohttp
    from yarl import URL

    from .providers.setup import simulated

    provider = _provider(settings, args.provider)
    try:
        built = simulated(
            provider,
            settings.server,
            user=args.user,
            amount=args.amount,
            transaction=args.transaction,
            reverse=args.reverse,
        )
    except ValueError as exc:
        raise ConfigError(f"simulate {provider.name}: {exc}") from None
    base = args.url or f"http://{settings.server.host}:{settings.server.port}"
    url = URL(base.rstrip("/") + built.path, encoded=True)
    headers = dict(built.headers)
    if built.content_type:
        headers["Content-Type"] = built.content_type
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.request(built.method, url, headers=headers, data=built.body or None) as resp,
        ):
            body = await resp.text()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"error: simulate: {built.method} {base}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    print(f"{built.method} {built.path.partition('?')[0]}: {resp.status} {one_line(body)}")
    return 0 if resp.status < 400 else 1


_COMMANDS = {
    "simulate": _simulate,
    "migrate": _migrate,
    "verify": _verify,
    "rebuild": _rebuild,
    "checkpoint": _checkpoint,
}

if __name__ == "__main__":
    sys.exit(main())
