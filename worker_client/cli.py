"""``btard-worker``: join a BTARD Swarm run from a volunteer's machine.

    BTARD_TOKEN=T btard-worker [--server https://site] [--device cuda|cpu] [--data-dir D]
    BTARD_TOKEN=T btard-worker doctor [--server https://site]

The token is best given in ``BTARD_TOKEN`` (or ``--token-file``): a ``--token`` argument is visible to
every user of the machine in ``ps``. A ``--server`` without a scheme means ``https://``; plain http is
accepted only for this machine (loopback) or with ``--insecure``.

Exit codes: 0 finished (``--max-steps``) or stopped with Ctrl-C, 2 bad usage, 3 the site refused
this worker (token refused or revoked, banned), 4 could not start (identity key, p2p daemon).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .exit_codes import EXIT_OK, EXIT_STARTUP, EXIT_USAGE

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=os.environ.get("BTARD_TOKEN"),
                        help="worker token from your volunteer page (/tokens/). Prefer the BTARD_TOKEN "
                             "environment variable or --token-file: other users of this machine see "
                             "command-line arguments in `ps`")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help="read the worker token from this file (first line)")
    parser.add_argument("--server", default=os.environ.get("BTARD_SERVER", DEFAULT_SERVER),
                        help="site address, https://host[:port] (no scheme means https; default: %(default)s)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a plain http:// site that is not on this machine (the token then travels "
                             "unencrypted: a trusted LAN only)")
    parser.add_argument("--allow-private", action="store_true",
                        help="dial and announce private, loopback and DNS peer addresses (a swarm on a LAN or "
                             "on this machine); by default only public IP addresses are dialled, so the site "
                             "cannot make this worker probe your network")
    parser.add_argument("--config-dir", default=None,
                        help="where the identity key lives (default: $BTARD_CONFIG_DIR or "
                             "$XDG_CONFIG_HOME/btard-swarm)")
    parser.add_argument("--host-maddr", action="append", default=None, metavar="MULTIADDR",
                        help="where the p2p daemon listens (default: /ip4/0.0.0.0/tcp/0); repeatable")
    parser.add_argument("--announce-maddr", action="append", default=None, metavar="MULTIADDR",
                        help="the public address other peers should dial (behind NAT with port forwarding)")
    parser.add_argument("--json", dest="json_logs", action="store_true", help="JSON lines instead of the live view")
    parser.add_argument("--log-level", default="WARNING", help=argparse.SUPPRESS)


def build_parser(show_test_options: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btard-worker",
        description="Contribute compute to a BTARD Swarm training run. "
                    "Run `btard-worker doctor --token T` first to check your setup.",
    )
    _common(parser)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="override device detection (default: cuda when available)")
    parser.add_argument("--data-dir", default=None, help="where datasets and caches live")
    parser.add_argument("--quiet", action="store_true", help="no live view: only errors and bans, as JSON lines")
    parser.add_argument("--new-key", action="store_true",
                        help="retire this site's identity key and start with a new one (after a key ban, "
                             "or a lost or leaked key: a new probation, your account and reputation are kept)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps (default: run until Ctrl-C)")
    parser.add_argument("--run", dest="run_id", type=int, default=None, metavar="ID",
                        help="join this run (the id in its page's address, /runs/ID/; default: the site's "
                             "newest open run)")
    parser.add_argument("--show-test-options", action="store_true",
                        help="list the options meant for testing the protocol")
    hidden = (lambda text: text) if show_test_options else (lambda text: argparse.SUPPRESS)
    parser.add_argument("--behaviour", "--behavior", default=None, metavar="NAME",
                        help=hidden("TESTING ONLY: behave Byzantine, NAME from the attacks registry "
                                    "(your account will be banned)"))
    parser.add_argument("--threads", type=int, default=None, help=hidden("torch threads (tests)"))
    parser.add_argument("--phase-timeout", type=float, default=None,
                        help=hidden("override the run's per-phase timeout in seconds (tests)"))
    parser.add_argument("--hold-broadcast", action="append", default=[], metavar="PHASE=SECONDS",
                        type=_hold_spec,
                        help=hidden("TESTING ONLY: send this peer's broadcasts of PHASE that many seconds late "
                                    "(a slow link); honest otherwise"))
    return parser


def _hold_spec(text: str) -> tuple[str, float]:
    from btard_wire import BOARD_PHASES

    phase, sep, seconds = text.partition("=")
    if not sep or phase not in BOARD_PHASES:
        raise argparse.ArgumentTypeError(f"expected PHASE=SECONDS with PHASE one of {', '.join(BOARD_PHASES)}")
    try:
        value = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{seconds!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("SECONDS must be between 0 and 3600")
    return phase, value


def build_doctor_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btard-worker doctor",
                                     description="Check the token, the site, the p2p daemon, whether other "
                                                 "peers can reach you, and the GPU; print what to fix.")
    _common(parser)
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per check (default: %(default)s)")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level.upper() != "DEBUG":
        logging.getLogger("hivemind").setLevel(logging.ERROR)


def _resolve_site_and_token(args, parser: argparse.ArgumentParser | None = None) -> str | None:
    """Check ``--server`` (scheme, plaintext) and read ``--token-file``; return the sentence on failure."""
    from .site_client import site_url

    try:
        args.server = site_url(args.server, insecure=args.insecure)
    except ValueError as exc:
        return str(exc)
    if args.token_file:
        try:
            with open(os.path.expanduser(args.token_file), encoding="utf-8") as fh:
                args.token = fh.readline().strip()
        except OSError as exc:
            return f"cannot read --token-file {args.token_file}: {exc.strerror or exc}"
        if not args.token:
            return f"--token-file {args.token_file} is empty"
    return None


def raise_fd_limit(want: int = 65536) -> None:
    """Raise the soft limit on open files towards the hard one: every peer stream costs a descriptor."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - not on this platform, or not allowed
        pass


def _identity(args) -> tuple[object, str] | None:
    from .identity import IdentityFileError, load_identity

    try:
        identity, path, created = load_identity(args.server, args.config_dir)
    except IdentityFileError as exc:
        print(f"btard-worker: {exc}", file=sys.stderr)
        return None
    return identity, ("new identity key at " if created else "identity key ") + str(path)


async def _run_until_signal(coro, view) -> int:
    """Run the worker; SIGTERM (a service manager stopping it) cancels it like Ctrl-C does, so the
    p2p daemon is shut down either way."""
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stopped = []

    def stop() -> None:
        stopped.append(True)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, stop)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
        pass
    try:
        return await coro
    except asyncio.CancelledError:
        if not stopped:
            raise
        view.event("exit", "stopped by SIGTERM")
        return EXIT_OK


def doctor_main(argv: list[str]) -> int:
    from .doctor import print_report, run_doctor

    parser = build_doctor_parser()
    args = parser.parse_args(argv)
    problem = _resolve_site_and_token(args)
    if problem:
        print(f"btard-worker doctor: {problem}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.log_level)
    loaded = _identity(args)
    if loaded is None:
        return EXIT_STARTUP
    identity, _ = loaded
    report = asyncio.run(run_doctor(server=args.server, token=args.token, identity=identity,
                                    host_maddrs=args.host_maddr or ["/ip4/0.0.0.0/tcp/0"],
                                    announce_maddrs=args.announce_maddr, timeout=args.timeout,
                                    allow_private=args.allow_private))
    print_report(report, as_json=args.json_logs)
    return EXIT_OK if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        return doctor_main(argv[1:])
    parser = build_parser(show_test_options="--show-test-options" in argv)
    args = parser.parse_args(argv)
    if args.show_test_options:
        parser.print_help()
        return EXIT_OK
    problem = _resolve_site_and_token(args)
    if problem:
        parser.error(problem)
    if not args.token:
        parser.error("--token is required (create one on the site's /tokens/ page)")
    if args.behaviour:
        from .worker import known_behaviours  # torch and hivemind load only for a worker that runs

        names = known_behaviours()
        if args.behaviour not in names:
            parser.error(f"unknown --behaviour {args.behaviour!r}; known: {', '.join(sorted(names)) or 'none'}")
    _setup_logging(args.log_level)
    if args.data_dir:
        # the task registry's data sets and caches live there (worker_client.tasks.datasets.cache_dir)
        os.environ["BTARD_CACHE_DIR"] = os.path.abspath(os.path.expanduser(args.data_dir))
    if args.new_key:
        from .identity import retire_identity

        retired = retire_identity(args.server, args.config_dir)
        if retired is not None:
            print(f"btard-worker: the old identity key was moved to {retired}", file=sys.stderr)
    loaded = _identity(args)
    if loaded is None:
        return EXIT_STARTUP
    identity, where = loaded

    from .ui import make_view
    from .worker import WorkerConfig, run_worker  # here, not at the top: --help and usage errors stay fast

    config = WorkerConfig(server=args.server, token=args.token, identity=identity, device=args.device,
                          data_dir=args.data_dir, host_maddrs=args.host_maddr or ["/ip4/0.0.0.0/tcp/0"],
                          announce_maddrs=args.announce_maddr, allow_private=args.allow_private,
                          behaviour=args.behaviour,
                          max_steps=args.max_steps, threads=args.threads, phase_timeout=args.phase_timeout,
                          hold_broadcasts=dict(args.hold_broadcast), run_id=args.run_id)
    raise_fd_limit()
    view = make_view(json_logs=args.json_logs, quiet=args.quiet)
    with view:
        view.event("start", where, peer_id=identity.peer_id)
        try:
            return asyncio.run(_run_until_signal(run_worker(config, view), view))
        except KeyboardInterrupt:
            view.event("exit", "stopped by Ctrl-C")
            return EXIT_OK
        except Exception as exc:  # noqa: BLE001 - one sentence for the volunteer, never a traceback
            logging.getLogger(__name__).debug("the worker failed", exc_info=True)
            view.event("fatal", f"the worker stopped on an unexpected error: {type(exc).__name__}: {exc}"[:600]
                       + " (run with --log-level DEBUG for details)")
            return EXIT_STARTUP


if __name__ == "__main__":
    sys.exit(main())
