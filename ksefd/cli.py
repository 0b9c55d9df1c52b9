"""Command line: the only place that parses arguments and exits (DESIGN.md)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ksefd import __version__
from ksefd.logs import configure_logging

EX_CONFIG = 78  # sysexits.h EX_CONFIG: bad configuration


def _sim_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help="run the KSeF API 2.0 simulator (behaves like the MF TEST environment)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to bind (default 8080; 0 picks a free one)")
    p.add_argument("--state", type=Path, default=None,
                   help="SQLite file that keeps the simulator's state across restarts (default: memory)")
    p.add_argument("--limits", choices=["test", "production", "off"], default="test",
                   help="rate-limit profile (test and production both use the PRD numbers)")
    p.add_argument("--faults", default="", help="fault switches, e.g. '5xx=0.1,latency=0.2' (see README)")
    p.add_argument("--processing-delay", type=float, default=0.0,
                   help="seconds an invoice stays in statuses 100/150 before its verdict")
    p.add_argument("--hwm-lag", type=float, default=5.0,
                   help="seconds permanentStorageHwmDate trails now")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ksefd", description="KSeF (API 2.0) daemon for file-based ERPs")
    parser.add_argument("--version", action="version", version=f"ksefd {__version__}")
    parser.add_argument("--log-format", choices=["auto", "console", "json"], default="auto")
    sub = parser.add_subparsers(dest="command", required=True)
    _sim_parser(sub)
    return parser


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():          # a second signal forces (DESIGN.md conventions 2)
            raise SystemExit(130)
        loop.call_soon_threadsafe(stop.set)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


async def _run_sim(args: argparse.Namespace) -> int:
    from ksefd.sim.app import serve
    from ksefd.sim.config import SimConfig

    config = SimConfig(host=args.host, port=args.port, state_path=args.state, limits_profile=args.limits,
                       faults=args.faults, processing_delay_s=args.processing_delay, hwm_lag_s=args.hwm_lag)
    stop = asyncio.Event()
    _stop_on_signals(stop)

    def ready(base_url: str) -> None:
        print(f"KSeF simulator listening on {base_url}  (Ctrl+C stops)", flush=True)

    await serve(config, stop, ready)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    if args.command == "sim":
        return asyncio.run(_run_sim(args))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
