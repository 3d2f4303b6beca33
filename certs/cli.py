"""`toolforge-admission certs rotate|status`: the rotation job and its inspection command.

rotate   Create or renew the CA and serving certificate, and keep every caBundle in step.
         Logs one JSON object per line on stdout: each step, then a `certificates` summary with
         every not-after (for alerting from logs). Exit 0 when done or when the next step is
         further away than --max-wait (the next run continues), 1 when it cannot do its work
         (including a Secret it did not issue), 2 on bad arguments.
status   Print what is installed, when each certificate expires and what rotation would do next.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from certs import report
from certs.renewal import CHAIN, evaluate, view
from certs.rotate import RotationError, event, gather, rotate
from certs.state import Settings
from certs.store import KubernetesStore, Store, StoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> datetime.timedelta:
    """`90d`, `12h`, `5m`, `30s` or plain seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90d, 12h, 5m, 30s)")
    return datetime.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolforge-admission certs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    defaults = Settings()
    common.add_argument("--namespace",
                        default=os.environ.get("POD_NAMESPACE") or defaults.namespace)
    common.add_argument("--service", default=defaults.service,
                        help="the webhook Service: the certificate is for svc, svc.ns, svc.ns.svc")
    common.add_argument("--secret", default=defaults.certs_secret,
                        help="Secret the webhook pods mount (tls.crt, tls.key, ca.crt)")
    common.add_argument("--ca-secret", default=defaults.ca_secret,
                        help="Secret holding the CA key; read by this job only")
    common.add_argument("--webhook-label", default=defaults.webhook_label,
                        help="label selector of the suite's webhook configurations")
    common.add_argument("--kubeconfig", help="default: in-cluster, else ~/.kube/config")
    common.add_argument("--leaf-lifetime", type=parse_duration, default=defaults.leaf_lifetime)
    common.add_argument("--leaf-renew-before", type=parse_duration,
                        help="default: a third of the leaf's lifetime")
    common.add_argument("--ca-lifetime", type=parse_duration, default=defaults.ca_lifetime)
    common.add_argument("--ca-renew-before", type=parse_duration,
                        help="default: a third of the CA's lifetime")
    common.add_argument("--propagation-delay", type=parse_duration,
                        default=defaults.propagation_delay,
                        help="how long a new caBundle or Secret takes to reach every API server "
                             "and webhook pod (default 5m)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rotate_cmd = commands.add_parser("rotate", parents=[common],
                                     help="create or renew certificates and caBundles")
    rotate_cmd.add_argument("--max-wait", type=parse_duration,
                            default=datetime.timedelta(minutes=6),
                            help="sleep through waits ending within this time of the start "
                                 "(default 6m; keep below the Job's activeDeadlineSeconds)")
    rotate_cmd.add_argument("--disabled", action="store_true",
                            help="do nothing and exit 0: certificates are managed elsewhere "
                                 "(cert-manager)")
    status_cmd = commands.add_parser("status", parents=[common],
                                     help="show certificates, bundles and what is due")
    status_cmd.add_argument("--json", action="store_true", help="print JSON")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(namespace=args.namespace, service=args.service, certs_secret=args.secret,
                    ca_secret=args.ca_secret, webhook_label=args.webhook_label,
                    leaf_lifetime=args.leaf_lifetime, leaf_renew_before=args.leaf_renew_before,
                    ca_lifetime=args.ca_lifetime, ca_renew_before=args.ca_renew_before,
                    propagation_delay=args.propagation_delay)


def kubernetes_store(kubeconfig: str | None, settings: Settings) -> Store:
    """A store on the cluster: the given kubeconfig, else in-cluster, else the default one."""
    from kubernetes import client  # noqa: PLC0415 (status/rotate only; tests skip it)
    from kubernetes import config as kube_config  # noqa: PLC0415

    config: Any = kube_config  # untyped library
    try:
        if kubeconfig:
            return KubernetesStore(config.new_client_from_config(config_file=kubeconfig),
                                   settings)
        try:
            config.load_incluster_config()
            return KubernetesStore(client.ApiClient(), settings)
        except config.ConfigException:
            return KubernetesStore(config.new_client_from_config(), settings)
    except (config.ConfigException, OSError, ValueError) as e:
        raise StoreError(f"cannot configure the Kubernetes client: {e}") from e


# The level of an event; every other event is `info`.
_LEVELS = {"error": "error", "refuse": "error", "warning": "warning"}


def log_line(now: datetime.datetime, record: dict[str, Any]) -> str:
    """One event as a JSON line in the server's log schema.

    The server (`webhooks/logs.py`) and this job cannot share a formatter (certs stands alone),
    so both write the same first fields by contract: `time` (UTC, RFC 3339 with milliseconds),
    `level`, `logger` and `message`, then the event's own fields.
    tests/unit/test_log_schema.py holds the two to it.
    """
    fields = dict(record)
    event = fields.get("event", "")
    entry = {"time": now.astimezone(datetime.UTC).isoformat(timespec="milliseconds"),
             "level": _LEVELS.get(event, "info"), "logger": "certs",
             "message": fields.pop("message", event), **fields}
    return json.dumps(entry)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def main(argv: list[str], *, store: Store | None = None,
         clock: Callable[[], datetime.datetime] = _utc_now,
         sleep: Callable[[float], None] = time.sleep,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run `certs ...`; returns the exit code. Tests pass a store, a clock and streams."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    settings = settings_from(args)
    try:
        settings.check()
    except ValueError as e:
        print(f"certs: {e}", file=err)
        return EXIT_USAGE

    def log(record: dict[str, Any]) -> None:
        print(log_line(clock(), record), file=out, flush=True)

    if args.command == "rotate" and args.disabled:
        log({"event": "disabled", "message": "rotation disabled: certificates are managed "
                                             "elsewhere; nothing to do"})
        return EXIT_OK
    try:
        if store is None:
            store = kubernetes_store(args.kubeconfig, settings)
        if args.command == "status":
            return _status(store, settings, clock(), args.json, out)
        outcome = rotate(store, settings, clock=clock, sleep=sleep, log=log,
                         max_wait=args.max_wait)
    except (RotationError, StoreError) as e:
        log({"event": "error", "error": type(e).__name__, "message": str(e)})
        print(f"certs {args.command}: {e}", file=err)
        return EXIT_FAILED
    if not outcome.view.observed.webhook_configurations:
        log({"event": "warning", "message": f"no webhook configuration matches "
                                            f"{settings.webhook_label!r}: no caBundle to fill"})
    log(event(outcome.final, steps=len(outcome.steps)))
    log({"event": "certificates", "message": "certificates installed",
         **report.describe(outcome.view)})
    return EXIT_OK


def _status(store: Store, settings: Settings, now: datetime.datetime, as_json: bool,
            out: TextIO) -> int:
    v = view(gather(store, settings), now, settings)
    summary = report.describe(v)
    action = evaluate(CHAIN, v)
    summary["next_step"] = {"action": action.kind, "reason": action.reason,
                            "message": action.message,
                            "until": None if action.until is None else action.until.isoformat()}
    if as_json:
        print(json.dumps(summary, indent=2), file=out)
        return EXIT_OK
    print(_format_status(summary), file=out)
    return EXIT_OK


def _format_status(s: dict[str, Any]) -> str:
    lines = [f"now: {s['now']}"]
    for key, secret in s["secrets"].items():
        state = "missing" if secret is None else (
            "issued by toolforge-admission" if secret["ours"] else "NOT ours (managed elsewhere)")
        lines.append(f"{key} secret: {state}")
    for role, ca in s["cas"].items():
        due = " (renewal due)" if ca.get("renewal_is_due") else ""
        lines.append(f"CA {role}: {ca['subject']} not-after {ca['not_after']}{due}"
                     f"{' EXPIRED' if ca['expired'] else ''}")
    for role, problem in s["ca_problems"].items():
        lines.append(f"CA {role}: UNUSABLE: {problem}")
    leaf = s["leaf"]
    if leaf is None:
        lines.append(f"serving certificate: none ({s['leaf_problem']})")
    else:
        due = " (renewal due)" if leaf["renewal_is_due"] else f" (renews {leaf['renewal_due']})"
        lines.append(f"serving certificate: {', '.join(leaf['dns_names'])} not-after "
                     f"{leaf['not_after']}{due}{' EXPIRED' if leaf['expired'] else ''}")
        lines.append(f"  signed by: {leaf['issuer'] or 'NO KNOWN CA'}"
                     f"{'' if leaf['key_matches'] else '; KEY DOES NOT MATCH'}")
    lines.append("bundles:")
    for where, roles in s["bundles"].items():
        lines.append(f"  {where}: {', '.join(roles) or 'EMPTY'}")
    step = s["next_step"]
    lines.append(f"next step: {step['action']} ({step['reason']}): {step['message']}"
                 + (f" at {step['until']}" if step["until"] else ""))
    return "\n".join(lines)
