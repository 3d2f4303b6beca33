"""The `toolforge-admission` command: serve, review offline, check a policy, manage certificates.

Exit codes: 0 allowed / valid, 1 denied / invalid, 2 bad input.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.resources
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_DENIED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_CERT_DIR = "/etc/webhook/certs"
DEFAULT_POLICY = "/etc/toolforge-admission/policy/policy.yaml"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["certs"]:
        # Certificates live in their own package; the command line is the one place that joins
        # the two (see the import-linter contracts in setup.cfg).
        from certs.cli import main as certs_main

        return int(certs_main(args[1:]))
    parsed = _parser().parse_args(args)
    return int(parsed.run(parsed))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolforge-admission", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the webhook server (gunicorn, TLS)")
    serve.add_argument("--bind", help="address:port (default 0.0.0.0:8443; 127.0.0.1:8443 "
                                      "with --dev)")
    serve.add_argument("--cert-dir", default=DEFAULT_CERT_DIR,
                       help="directory with tls.crt and tls.key (the webhook-certs Secret)")
    serve.add_argument("--policy", default=DEFAULT_POLICY, help="the policy file to follow")
    serve.add_argument("--workers", type=int, default=2)
    # Threads serve requests in progress only (idle connections wait in the poller). On one
    # core they add no throughput, only interleaving that lengthens the tail; two per worker
    # keep one free while the other waits on the API server for an active-run check.
    serve.add_argument("--threads", type=int, default=2)
    serve.add_argument("--client-ca", help="mutual TLS: admission reviews only from clients "
                                           "with a certificate signed by this CA (the API "
                                           "server's webhook client certificate); probes and "
                                           "/metrics stay open")
    serve.add_argument("--client-name", action="append", dest="client_names", default=[],
                       metavar="NAME", help="with --client-ca: the client certificate's CN or "
                                            "a DNS name must be NAME (repeat for several)")
    serve.add_argument("--status-bind", metavar="ADDRESS",
                       help="a second address:port serving /healthz, /readyz and /metrics only, "
                            "to clients without a certificate (needed with --client-ca, which "
                            "closes them on the review port)")
    serve.add_argument("--header-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="a request's line and headers must arrive within this long of its "
                            "first byte, and a TLS handshake within this long of the connect "
                            "(default 5)")
    serve.add_argument("--body-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="a request's body must arrive within this long of its headers "
                            "(default 10)")
    serve.add_argument("--max-connections", type=int, default=512, metavar="N",
                       help="connections per worker; beyond, the longest idle is closed "
                            "(default 512)")
    serve.add_argument("--dev", action="store_true",
                       help="on 127.0.0.1 with a fresh self-signed certificate and the bundled "
                            "example policy")
    serve.set_defaults(run=_serve)

    review = commands.add_parser("review", help="evaluate an object offline, as the API "
                                                "server would send it")
    review.add_argument("input", help="AdmissionReview JSON or a manifest (YAML/JSON), - for stdin")
    review.add_argument("--policy", required=True, help="policy file or ConfigMap manifest")
    review.add_argument("--endpoint", choices=_endpoint_names(),
                        help="one endpoint only (default: mutating first, then validating)")
    review.add_argument("--user", help="requester username for a manifest (default: the tool of "
                                       "a tool namespace, else kubernetes-admin)")
    review.add_argument("--group", action="append", dest="groups",
                        help="requester group (repeat; default: the policy's first tool group "
                             "for a tool's user, system:masters otherwise)")
    review.add_argument("--namespace", help="namespace for a manifest (default: its own)")
    review.add_argument("--operation", default="CREATE", choices=["CREATE", "UPDATE", "DELETE"])
    review.add_argument("--old", help="the stored object, for --operation UPDATE")
    review.add_argument("--dry-run", action="store_true")
    review.set_defaults(run=_review)

    policy = commands.add_parser("policy", help="policy tools")
    policy_commands = policy.add_subparsers(required=True, metavar="COMMAND")
    check = policy_commands.add_parser("check", help="validate a policy file or ConfigMap")
    check.add_argument("file", help="policy YAML or ConfigMap manifest, - for stdin")
    check.set_defaults(run=_policy_check)

    commands.add_parser("certs", help="certificate rotation (see `certs --help`)")
    return parser


def _endpoint_names() -> list[str]:
    from webhooks.admission import ENDPOINTS

    return [endpoint.name for endpoint in ENDPOINTS]


def _serve(args: argparse.Namespace) -> int:
    if args.client_names and not args.client_ca:
        print("error: --client-name needs --client-ca", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.client_ca and not args.status_bind:
        print("error: --client-ca needs --status-bind: the review port then closes connections "
              "without a client certificate, and probes and Prometheus have none",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if min(args.header_timeout, args.body_timeout) <= 0 or args.max_connections < 1:
        print("error: timeouts must be positive and --max-connections at least 1",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    # prometheus_client picks its multiprocess mode when it is first imported, so the directory
    # must exist before anything imports the app.
    state_dir = Path(tempfile.mkdtemp(prefix="toolforge-admission-"))
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(state_dir))
    from webhooks.server import ServerOptions, WebhookServer
    from webhooks.worker import Limits

    cert_dir = Path(args.cert_dir)
    policy = Path(args.policy)
    bind = args.bind or ("127.0.0.1:8443" if args.dev else "0.0.0.0:8443")
    if args.dev:
        cert_dir = _dev_certificate(bind)
        if args.policy == DEFAULT_POLICY:
            policy = Path(str(importlib.resources.files("policies") / "example-policy.yaml"))
        host, _, port = bind.rpartition(":")
        print(f"toolforge-admission (dev) on https://{host}:{port}/\n"
              f"  CA certificate: {cert_dir / 'ca.crt'}\n"
              f"  policy:         {policy}\n"
              f"  try: curl --cacert {cert_dir / 'ca.crt'} https://{host}:{port}/readyz",
              flush=True)
    options = ServerOptions(
        bind=bind, cert_file=cert_dir / "tls.crt", key_file=cert_dir / "tls.key",
        policy_file=policy, workers=args.workers, threads=args.threads,
        client_ca_file=Path(args.client_ca) if args.client_ca else None,
        client_names=tuple(args.client_names), status_bind=args.status_bind,
        limits=Limits(header_seconds=args.header_timeout, body_seconds=args.body_timeout,
                      max_connections=args.max_connections),
        state_dir=state_dir, cluster=not args.dev or bool(os.environ.get("KUBECONFIG")))
    WebhookServer(options).run()
    return EXIT_OK


def _dev_certificate(bind: str) -> Path:
    from certs.issue import new_ca, new_serving_cert

    now = datetime.datetime.now(datetime.UTC)
    directory = Path(tempfile.mkdtemp(prefix="toolforge-admission-dev-"))
    ca = new_ca("toolforge-admission dev CA", now, datetime.timedelta(days=7))
    host = bind.rpartition(":")[0].strip("[]")
    ips = sorted({"127.0.0.1", host} - {"localhost", "0.0.0.0"})  # noqa: S104
    leaf = new_serving_cert(ca, ["localhost"], now, datetime.timedelta(days=7),
                            ip_addresses=tuple(ips))
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "tls.crt").write_bytes(leaf.cert_pem)
    (directory / "tls.key").write_bytes(leaf.key_pem)
    (directory / "tls.key").chmod(0o600)
    return directory


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    return Path(name).read_bytes()


def _policy_text(data: bytes) -> bytes:
    """The policy inside a ConfigMap manifest, or the file itself when it is a policy."""
    import yaml

    from webhooks.admission import POLICY_KEY

    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError:
        return data  # parse_policy reports the YAML error with its position
    if isinstance(document, dict) and document.get("kind") == "ConfigMap":
        text = (document.get("data") or {}).get(POLICY_KEY)
        if not isinstance(text, str):
            raise ValueError(f"the ConfigMap has no data key {POLICY_KEY}")
        return text.encode()
    return data


def _policy_check(args: argparse.Namespace) -> int:
    from policies.model import PolicyError, parse_policy

    try:
        policy = parse_policy(_policy_text(_read_input(args.file)))
    except (OSError, ValueError) as error:
        problems = error.problems if isinstance(error, PolicyError) else (str(error),)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_DENIED if isinstance(error, PolicyError) else EXIT_BAD_INPUT
    print(f"ok: policy is valid (sha256 {policy.digest[:12]})")
    return EXIT_OK


def _review(args: argparse.Namespace) -> int:
    from policies.model import PolicyError, parse_policy
    from webhooks.offline import OfflineReviewError, review_offline

    try:
        policy = parse_policy(_policy_text(Path(args.policy).read_bytes()))
        data = _read_input(args.input)
        old = Path(args.old).read_bytes() if args.old else None
        outcome = review_offline(
            data, policy, endpoint=args.endpoint, user=args.user, groups=args.groups,
            namespace=args.namespace, operation=args.operation, old=old, dry_run=args.dry_run,
            now=datetime.datetime.now(datetime.UTC))
    except PolicyError as error:
        for problem in error.problems:
            print(f"error: policy: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, OfflineReviewError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in outcome.notes:
        print(line, file=sys.stderr)
    _print_json(outcome.review)
    return EXIT_OK if outcome.allowed else EXIT_DENIED


def _print_json(document: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    sys.exit(main())
