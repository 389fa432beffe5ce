"""`imagingctl`: the one command line of the system.

  edge                 serve the HTTP API (:5000)
  relay                serve SSE + WebSocket (:5006)
  worker <domain>      run one worker (users, patients, imaging, system); run several to scale
  migrate              apply database migrations (Alembic) up to head
  seed-admin           create the first system_admin from ADMIN_EMAIL / ADMIN_PASSWORD
  seed-demo            demo data (users, organisation, a week of schedules) through the running workers;
                       refused in production; password from DEMO_PASSWORD or generated and printed once
  asyncapi             print the AsyncAPI document of every command, query and event
  run-all              supervise edge, relay and the four workers with prefixed logs
  reset --yes          drop every schema and migrate again (development only)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from contracts.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from contracts.demo import SeedDemoResult


def _alembic_config():
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", get_settings().sqlalchemy_url)
    return config


def migrate() -> None:
    from alembic import command

    _ensure_database()
    command.upgrade(_alembic_config(), "head")


def _ensure_database() -> None:
    """Create the database named in DATABASE_URL when it does not exist yet."""
    import asyncpg

    async def run() -> None:
        url = get_settings().database_url
        base, _, name = url.rpartition("/")
        name = name.split("?", 1)[0]
        conn = await asyncpg.connect(f"{base}/postgres")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())


def reset() -> None:
    from alembic import command

    settings = get_settings()
    if not settings.is_development:
        raise SystemExit("reset is refused outside development")
    command.downgrade(_alembic_config(), "base")
    command.upgrade(_alembic_config(), "head")


def seed_admin() -> None:
    from workers.users.seed import seed_admin as run

    settings = get_settings()
    email = os.environ.get("ADMIN_EMAIL", "admin@hospital.local")
    result = asyncio.run(run(settings, email, os.environ.get("ADMIN_PASSWORD") or None))
    if not result.created:
        print(f"seed-admin: {result.email} already exists; nothing changed")
    elif result.generated_password:
        print(f"seed-admin: created {result.email} with the one-time password: {result.generated_password}")
        print("seed-admin: it is shown only now and must be changed at first sign-in")
    else:
        print(f"seed-admin: created {result.email} with the password from ADMIN_PASSWORD")


def seed_demo() -> None:
    """Send the seed commands (contracts.demo.SEED_DEMO_COMMANDS) to the running workers, in order.

    Over the bus rather than in-process: every domain seeds itself through its own worker, its
    handlers, inbox, audit entry and events, exactly as `POST /admin/seed-demo` does, and the
    domains that come later only add their command to that one list."""
    from contracts.demo import is_production
    from contracts.errors import DomainError

    settings = get_settings()
    if is_production(settings):
        raise SystemExit("seed-demo is refused when ENVIRONMENT=production")
    password = settings.demo_password or None
    generated = None
    if password is None:
        generated = password = secrets.token_urlsafe(15)
    try:
        results = asyncio.run(_send_seed_demo(settings, password, must_change=generated is not None))
    except DomainError as exc:
        hint = " (are the workers running? `imagingctl run-all`)" if exc.status in (503, 504) else ""
        raise SystemExit(f"seed-demo: refused: {exc.status} {exc.code}: {exc.detail}{hint}") from None
    created_any = False
    for result in results:
        made = ", ".join(f"{k} {v}" for k, v in result.created.items())
        kept = ", ".join(f"{k} {v}" for k, v in result.existed.items())
        print(f"seed-demo: {result.command}: created {made}; already there {kept}")
        if result.skipped:
            print(f"seed-demo: {result.command}: skipped " + ", ".join(f"{k} {v}" for k, v in result.skipped.items()))
        for account in result.accounts:
            created_any = created_any or account.created
            state = "created" if account.created else "already existed (password unchanged)"
            print(f"seed-demo: {account.role.value:<18} {account.email}  {state}")
    if not created_any:
        print("seed-demo: no account was created; existing demo accounts keep their passwords")
    elif generated is None:
        print("seed-demo: the new demo accounts use the password from DEMO_PASSWORD")
    else:
        print(f"seed-demo: the new demo accounts share the one-time password: {generated}")
        print("seed-demo: it is shown only now and must be changed at first sign-in")


async def _send_seed_demo(settings: Settings, password: str, *, must_change: bool) -> list[SeedDemoResult]:
    from contracts.demo import SEED_TIMEOUT, send_seed_commands
    from contracts.envelope import Actor
    from contracts.errors import Unavailable
    from contracts.registry import load_all
    from contracts.rpc import RpcClient

    load_all()
    bus = RpcClient(settings.amqp_url, name="imagingctl-seed-demo", timeout=SEED_TIMEOUT)
    await bus.start(wait=15)
    try:
        if not bus.is_ready:
            raise Unavailable("RabbitMQ is not reachable at AMQP_URL")
        return await send_seed_commands(bus, Actor(system="seed-demo"), password=password,
                                        must_change_password=must_change)
    finally:
        await bus.close()


def run_worker(domain: str) -> None:
    from contracts.observability import setup_logging
    from workers.domains import build_worker

    settings = get_settings()
    setup_logging(f"worker-{domain}", settings.log_level, settings.log_format)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr="127.0.0.1")
    _uvloop()
    worker = build_worker(domain, settings)
    _settle_heap()
    asyncio.run(worker.run_forever())


def run_edge() -> None:
    from edge.app import main

    _settle_heap()
    main()


def run_relay() -> None:
    from edge.relay import main

    _settle_heap()
    main()


def _settle_heap() -> None:
    """Move everything loaded at start-up (modules, tables, compiled statements) out of the garbage
    collector's reach: a full collection then scans only what requests create, so it no longer
    stalls a request for tens of milliseconds in a process holding SQLAlchemy and Litestar."""
    import gc

    gc.collect()
    gc.freeze()


def _uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


PROCESSES = [
    ("edge", ["edge"]),
    ("relay", ["relay"]),
    ("users", ["worker", "users"]),
    ("patients", ["worker", "patients"]),
    ("imaging", ["worker", "imaging"]),
    ("system", ["worker", "system"]),
]


def run_all() -> None:
    """Run every process as a child with prefixed output; restart one that dies; Ctrl-C or
    SIGTERM stops them all gracefully (SIGTERM, then SIGKILL after the grace period)."""
    asyncio.run(_supervise())


async def _supervise() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    width = max(len(name) for name, _ in PROCESSES)
    children: dict[str, asyncio.subprocess.Process] = {}

    async def pump(name: str, stream: asyncio.StreamReader) -> None:
        prefix = f"{name:<{width}} | ".encode()
        while line := await stream.readline():
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.flush()

    base_metrics = get_settings().metrics_port

    async def keep(name: str, args: list[str]) -> None:
        delay = 1.0
        env = dict(os.environ)
        if base_metrics and args[0] == "worker":
            env["METRICS_PORT"] = str(base_metrics + 1 + [n for n, _ in PROCESSES].index(name))
        while not stop.is_set():
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workers.cli", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, env=env,
            )
            children[name] = proc
            assert proc.stdout is not None
            await asyncio.gather(pump(name, proc.stdout), proc.wait())
            if stop.is_set():
                return
            print(f"{name:<{width}} | exited with {proc.returncode}; restarting in {delay:g} s", flush=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    tasks = [asyncio.create_task(keep(name, args)) for name, args in PROCESSES]
    await stop.wait()
    print("run-all: stopping…", flush=True)
    for proc in children.values():
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    grace = get_settings().shutdown_grace + 5
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in children.values())), grace)
    except TimeoutError:
        for proc in children.values():
            if proc.returncode is None:
                proc.kill()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print("run-all: stopped", flush=True)


def print_asyncapi() -> None:
    from contracts.asyncapi import asyncapi_document

    print(json.dumps(asyncapi_document(), indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagingctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("edge")
    sub.add_parser("relay")
    worker = sub.add_parser("worker")
    worker.add_argument("domain", choices=["users", "patients", "imaging", "system"])
    sub.add_parser("migrate")
    sub.add_parser("seed-admin")
    sub.add_parser("seed-demo")
    sub.add_parser("asyncapi")
    sub.add_parser("run-all")
    reset_cmd = sub.add_parser("reset")
    reset_cmd.add_argument("--yes", action="store_true", required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        get_settings()
    except SettingsError as exc:
        raise SystemExit(f"configuration error: {exc}") from exc
    commands = {
        "edge": run_edge,
        "relay": run_relay,
        "migrate": migrate,
        "seed-admin": seed_admin,
        "seed-demo": seed_demo,
        "asyncapi": print_asyncapi,
        "run-all": run_all,
        "reset": reset,
    }
    if args.command == "worker":
        run_worker(args.domain)
    else:
        commands[args.command]()


if __name__ == "__main__":
    main()
