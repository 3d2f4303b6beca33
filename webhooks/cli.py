"""The `toolforge-admission` command: serve the webhooks, judge objects offline (review), run
policy test suites (test), judge what already runs (audit), check a policy, rotate certificates.

Exit codes: 0 allowed / valid / passed, 1 denied / invalid / failed, 2 bad input (one line on
stderr; never a traceback, which would end in 1). docs/cli.md has the manual.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.resources
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhooks.mounts import POLICY_FILE

if TYPE_CHECKING:
    from policies.model import Policy

EXIT_OK, EXIT_DENIED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_CERT_DIR = "/etc/webhook/certs"
DEFAULT_POLICY = POLICY_FILE
ADMIN = "kubernetes-admin"
MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["certs"]:
        # Certificates live in their own package; the command line is the one place that joins
        # the two (see the import-linter contracts in setup.cfg).
        from certs.cli import main as certs_main

        return int(certs_main(args[1:]))
    parsed = _parser().parse_args(args)
    from webhooks.policy_files import InputError

    try:
        return int(parsed.run(parsed))
    except InputError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:
        # Exit 1 means "denied"; a failure must never look like a verdict.
        if os.environ.get("TOOLFORGE_ADMISSION_DEBUG"):
            raise
        print(f"error: {type(error).__name__}: {error} (set TOOLFORGE_ADMISSION_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolforge-admission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version_text())
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the webhook server (gunicorn, TLS)")
    serve.add_argument("--bind", help="address:port (default 0.0.0.0:8443; 127.0.0.1:8443 "
                                      "with --dev)")
    serve.add_argument("--cert-dir", default=DEFAULT_CERT_DIR,
                       help="directory with tls.crt and tls.key (the webhook-certs Secret)")
    serve.add_argument("--policy", default=DEFAULT_POLICY, help="the policy file to follow")
    serve.add_argument("--workers", type=int, default=2, metavar="N",
                       help="worker processes, each with its own connections and threads; one "
                            "per core the pod may use (default 2)")
    # Threads serve requests in progress only (idle connections wait in the poller). On one
    # core they add no throughput, only interleaving that lengthens the tail; two per worker
    # keep one free while the other waits on the API server for an active-run check.
    serve.add_argument("--threads", type=int, default=2, metavar="N",
                       help="threads per worker that answer requests already read in full "
                            "(idle and slow connections hold none); two keep one free while "
                            "the other waits on the API server for an active-run check "
                            "(default 2)")
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
    serve.add_argument("--idle-timeout", type=float, default=120.0, metavar="SECONDS",
                       help="a connection with no request under way (new, or kept alive after "
                            "an answer) is closed after this long; keep it above the API "
                            "server's 90 s, so that the API server closes idle connections "
                            "itself (a close of ours can race its reuse and fail a review) "
                            "(default 120)")
    serve.add_argument("--write-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="an answer the client does not take must be written within this "
                            "long, else the connection is closed (default 10)")
    serve.add_argument("--body-budget", type=int, default=32, metavar="MIB",
                       help="the bodies a worker is reading share this many MiB (counted by "
                            "their Content-Length); a body that would exceed it closes the one "
                            "being read longest; at least 3, the largest body (default 32)")
    serve.add_argument("--max-connections", type=int, default=512, metavar="N",
                       help="connections per worker; beyond, one that never carried a request is "
                            "closed (the oldest), else the one idle longest (default 512)")
    serve.add_argument("--dev", action="store_true",
                       help="on 127.0.0.1 with a fresh self-signed certificate and the bundled "
                            "example policy")
    serve.set_defaults(run=_serve)
    _add_review(commands)
    _add_test(commands)
    _add_audit(commands)

    policy = commands.add_parser("policy", help="policy tools")
    policy_commands = policy.add_subparsers(required=True, metavar="COMMAND")
    check = policy_commands.add_parser(
        "check", help="validate a policy file or ConfigMap",
        description="Validate a policy. Exit 0 when valid, 1 when it has problems (each on a "
                    "line), 2 when there is no policy to check.")
    check.add_argument("file", help="policy YAML or ConfigMap manifest, - for stdin")
    check.set_defaults(run=_policy_check)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=_version)

    commands.add_parser("certs", help="certificate rotation (see `certs --help`)")
    return parser


def _add_review(commands: Any) -> None:
    review = commands.add_parser(
        "review", help="judge objects offline, as the API server would send them",
        description="Judge objects offline, as the suite would answer the API server: "
                    "AdmissionReviews and manifests, in files, directories (every *.yaml, *.yml, "
                    "*.json below), multi-document YAML and kubectl Lists. Exit 0 when all are "
                    "allowed, 1 when any is denied, 2 on bad input.")
    review.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="file or directory of AdmissionReviews or manifests, - for stdin")
    review.add_argument("--policy", required=True, help="policy file or ConfigMap manifest")
    review.add_argument("--endpoint", choices=_endpoint_names(),
                        help="one endpoint only (default: those that accept the kind, mutating "
                             "first, as the API server calls them)")
    review.add_argument("--user", help="requester of a manifest (default: the tool of a tool "
                                       "namespace, or of a build run's tool label; else "
                                       f"{ADMIN})")
    review.add_argument("--group", action="append", dest="groups",
                        help="requester group (repeat; default: the policy's first tool group "
                             "for a tool's user, the ServiceAccount groups for a ServiceAccount, "
                             "system:masters otherwise)")
    review.add_argument("--namespace", help="namespace of a manifest (default: its own, else "
                                            "default)")
    review.add_argument("--operation", default="CREATE", choices=["CREATE", "UPDATE", "DELETE"])
    review.add_argument("--old", help="the stored object, for --operation UPDATE (one input "
                                      "object only)")
    review.add_argument("--dry-run", action="store_true")
    review.add_argument("--now", type=_instant, help="judge as on this day or at this time (UTC; "
                                                     "2027-07-01 or 2027-07-01T12:00:00Z), e.g. "
                                                     "after an exception expires")
    review.add_argument("-o", "--output", choices=["table", "json", "yaml"],
                        help="table: one line per object (the default on a terminal); json, "
                             "yaml: the AdmissionReviews (the default otherwise: json)")
    mutated = review.add_mutually_exclusive_group()
    mutated.add_argument("--show-mutated", action="store_const", const="diff",
                         dest="show_mutated", help="list what mutation changed, at its path")
    mutated.add_argument("--show-mutated-object", action="store_const", const="object",
                         dest="show_mutated", help="print each mutated object as the API server "
                                                   "would store it")
    review.set_defaults(run=_review)


def _add_test(commands: Any) -> None:
    test = commands.add_parser(
        "test", help="run policy test suites",
        description="Run policy test suites (docs/cli.md has the format): each case judges an "
                    "object as `review` would and compares the verdict, message and mutated "
                    "fields with the expected ones. Exit 0 when all pass, 1 when any fails, 2 "
                    "when a suite cannot be run.")
    test.add_argument("paths", nargs="+", metavar="PATH",
                      help="a suite file, or a directory searched for suites")
    test.set_defaults(run=_test)


def _add_audit(commands: Any) -> None:
    audit = commands.add_parser(
        "audit", help="judge what already runs in the cluster against the policy",
        description="Judge the pods and workloads of tool namespaces and the PipelineRuns as if "
                    "they were created now, against the policy in force (the ConfigMap) or a "
                    "proposed one (--policy), and report per tool what would be refused. Uses "
                    "KUBECONFIG (or the in-cluster ServiceAccount) and only lists. Exit 0 when "
                    "nothing would be refused, 1 when something would, 2 when the audit cannot "
                    "be done.")
    audit.add_argument("--policy", help="a proposed policy file or ConfigMap manifest (default: "
                                        "the policy in force, read from the cluster)")
    scope = audit.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="audit this namespace only, whatever it is")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="audit every tool namespace and the build namespace (the default)")
    audit.add_argument("-o", "--output", choices=["table", "json"], default="table")
    audit.add_argument("--context", help="the kubeconfig context to use")
    audit.add_argument("--policy-namespace",
                       default=os.environ.get("POD_NAMESPACE") or "toolforge-admission",
                       help="where the policy ConfigMap and the audit summary live (default: "
                            "$POD_NAMESPACE, else toolforge-admission)")
    audit.add_argument("--publish", action="store_true",
                       help="write PolicyReports per namespace and the summary the webhook "
                            "exports as metrics (the audit CronJob does)")
    audit.add_argument("--exit-zero", action="store_true",
                       help="exit 0 even when something would be refused (the CronJob: its "
                            "findings go to the reports and the metric)")
    audit.add_argument("--page-size", type=int, default=500, help="objects per list call")
    audit.add_argument("--now", type=_instant, help="judge as on this day or at this time (UTC)")
    audit.set_defaults(run=_audit)


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
    if min(args.header_timeout, args.body_timeout, args.idle_timeout, args.write_timeout) <= 0 \
            or args.max_connections < 1 or min(args.workers, args.threads) < 1:
        print("error: timeouts must be positive, and --max-connections, --workers and "
              "--threads at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    from webhooks.review import MAX_BODY_BYTES

    if args.body_budget * MIB < MAX_BODY_BYTES:
        print(f"error: --body-budget must be at least {MAX_BODY_BYTES // MIB} (MiB): the "
              "largest body must fit", file=sys.stderr)
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
                      idle_seconds=args.idle_timeout, write_seconds=args.write_timeout,
                      buffered_bytes=args.body_budget * MIB,
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


def _version_text() -> str:
    try:
        return f"toolforge-admission {importlib.metadata.version('toolforge-admission')}"
    except importlib.metadata.PackageNotFoundError:
        return "toolforge-admission (not installed as a package)"


def _version(args: argparse.Namespace) -> int:
    print(_version_text())
    return EXIT_OK


def _instant(text: str) -> datetime.datetime:
    """A --now value: a day (its start, UTC) or a time (UTC unless it says otherwise)."""
    try:
        if len(text) == 10:
            day = datetime.date.fromisoformat(text)
            return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD) nor a time "
                                         f"(YYYY-MM-DDTHH:MM:SSZ): {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _policy_check(args: argparse.Namespace) -> int:
    from webhooks.policy_files import PolicyFileError, load_policy

    try:
        policy = load_policy(args.file)
    except PolicyFileError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT if error.unreadable else EXIT_DENIED
    print(f"ok: policy is valid (sha256 {policy.digest[:12]})")
    return EXIT_OK


def _review(args: argparse.Namespace) -> int:
    from webhooks.batch import BatchOptions, review_inputs
    from webhooks.documents import read_documents
    from webhooks.offline import Requester
    from webhooks.policy_files import InputError

    output = args.output or ("table" if sys.stdout.isatty() or args.show_mutated else "json")
    if args.show_mutated == "diff" and output != "table":
        raise InputError("--show-mutated is for people: use -o table, or "
                         "--show-mutated-object for the objects as JSON or YAML")
    policy = _load_policy(args.policy)
    old = None
    if args.old:
        documents = list(read_documents([args.old]))
        if len(documents) != 1 or not isinstance(documents[0].body, dict):
            raise InputError(f"--old {args.old}: must hold exactly one object")
        old = documents[0].body
    requester = Requester(user=args.user, groups=tuple(args.groups) if args.groups else None,
                          namespace=args.namespace, operation=args.operation, old=old,
                          dry_run=args.dry_run)
    options = BatchOptions(output=output, show_mutated=args.show_mutated, endpoint=args.endpoint,
                           requester=requester,
                           now=args.now or datetime.datetime.now(datetime.UTC))
    return review_inputs(args.inputs, policy, options, sys.stdout, sys.stderr)


def _test(args: argparse.Namespace) -> int:
    from webhooks.suites import SuiteError, find_suites, run_suite

    clock = datetime.datetime.now(datetime.UTC)
    passed = failed = broken = 0
    try:
        names = find_suites(args.paths)
    except SuiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for name in names:
        try:
            result = run_suite(name, clock)
        except SuiteError as error:
            print(f"{name}\n  error: {error}")
            broken += 1
            continue
        print(name)
        for case in result.cases:
            print(f"  {'ok  ' if case.passed else 'FAIL'}  {case.name}")
            for failure in case.failures:
                print(f"          {failure}")
        passed += sum(case.passed for case in result.cases)
        failed += sum(not case.passed for case in result.cases)
    summary = f"{passed} passed, {failed} failed"
    print(summary + (f", {broken} suite{'s' if broken != 1 else ''} could not run" if broken
                     else ""))
    if broken:
        return EXIT_BAD_INPUT
    return EXIT_DENIED if failed else EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    import orjson

    from policies.configmap import POLICY_CONFIGMAP
    from webhooks.audit import AuditError, audit, audit_document, audit_table, summary_text
    from webhooks.inventory import CONFIGMAPS, ApiError, KubernetesApi
    from webhooks.policy_files import InputError, PolicyFileError, policy_from_configmap
    from webhooks.policy_reports import publish_reports, publish_summary, summary

    now = args.now or datetime.datetime.now(datetime.UTC)
    try:
        api = KubernetesApi.from_environment(args.context)
        if args.policy:
            policy, source = _load_policy(args.policy), args.policy
        else:
            source = f"the ConfigMap {args.policy_namespace}/{POLICY_CONFIGMAP}"
            configmap = api.read(CONFIGMAPS, args.policy_namespace, POLICY_CONFIGMAP)
            if configmap is None:
                raise InputError(f"{source} does not exist: give a policy with --policy FILE")
            policy = policy_from_configmap(configmap, source)
        result = audit(api, policy, now=now, namespace=args.namespace,
                       page_size=args.page_size)
    except PolicyFileError as error:
        raise InputError("\n".join(f"policy: {p}" for p in error.problems)) from None
    except (ApiError, AuditError) as error:
        raise InputError(f"cannot audit: {error}") from None
    if args.output == "json":
        document = audit_document(result, source, policy.digest, now)
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(audit_table(result))
    print(summary_text(result, source, policy.digest), file=sys.stderr)
    for resource in result.not_served:
        print(f"note: the cluster does not serve {resource}: not audited", file=sys.stderr)
    if args.publish:
        try:
            print(publish_reports(api, result, now, policy.digest, namespace=args.namespace),
                  file=sys.stderr)
            publish_summary(api, args.policy_namespace, summary(result, now, policy.digest))
        except ApiError as error:
            raise InputError(f"cannot publish the audit: {error}") from None
    return EXIT_DENIED if result.findings and not args.exit_zero else EXIT_OK


def _load_policy(name: str) -> Policy:
    """The policy for `review`, `test` and `audit --policy`: its problems are bad input."""
    from webhooks.policy_files import InputError, PolicyFileError, load_policy

    try:
        return load_policy(name)
    except PolicyFileError as error:
        raise InputError("\n".join(f"policy: {problem}" for problem in error.problems)) from None


if __name__ == "__main__":
    sys.exit(main())
