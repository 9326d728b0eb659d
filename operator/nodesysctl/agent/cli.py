"""`python -m nodesysctl.agent`: one JSON result line on stdout and in the termination log.

Exit codes: 0 the agent ran (Compliant, Remediated or Drifted), 1 Failed, 2 bad spec or
arguments (a Failed result is still printed). Logs go to stderr only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from nodesysctl.agent.contract import AgentResult, parse_spec_json, policy_hint
from nodesysctl.agent.run import HOST_MOUNT_ROOT, AgentPaths, failed_result, run_agent

SPEC_ENV = "NODESYSCTL_AGENT_SPEC"
NODE_ENV = "NODE_NAME"
EXIT_BAD_INPUT = 2

log = logging.getLogger("nodesysctl.agent")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse would print usage and exit; the caller still needs a result it can parse.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m nodesysctl.agent",
        description="Check and correct this node's ip_local_port_range / ip_local_reserved_ports.",
    )
    parser.add_argument("--spec-json", help=f"the AgentSpec as JSON (default: ${SPEC_ENV})")
    parser.add_argument("--proc-sys", type=Path, default=AgentPaths.proc_sys)
    parser.add_argument("--proc-net", type=Path, default=AgentPaths.proc_net)
    parser.add_argument(
        "--sysctl-dir",
        type=Path,
        default=AgentPaths.sysctl_dir,
        help="where the persistence file goes (the host's /etc/sysctl.d, mounted)",
    )
    parser.add_argument(
        "--host-root",
        type=Path,
        default=None,
        help="where the host's / would be mounted: links are resolved inside it and messages "
        f"name host paths (default: {HOST_MOUNT_ROOT} when --sysctl-dir is under it, else /)",
    )
    parser.add_argument(
        "--clean-dir",
        type=Path,
        action="append",
        default=[],
        dest="clean_dirs",
        help="another host sysctl directory, mounted, from which nodesysctl's own files are "
        "removed (a sysctlDir no longer used); repeatable",
    )
    parser.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"))
    return parser


def _emit(result: AgentResult, termination_log: Path) -> None:
    text = result.to_json()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    try:
        termination_log.write_text(text, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", termination_log, exc)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    node = os.environ.get(NODE_ENV, "")
    now = datetime.now(UTC)
    parser = _parser()
    try:
        # Known arguments first, so that a bad one still leaves the result where it was asked.
        args, unknown = parser.parse_known_args(argv)
    except _UsageError as exc:
        default_log = parser.get_default("termination_log")
        _emit(failed_result(f"bad arguments: {exc}", node=node, now=now), default_log)
        return EXIT_BAD_INPUT
    termination_log = args.termination_log
    if unknown:
        message = f"bad arguments: unrecognized arguments: {' '.join(unknown)}"
        _emit(failed_result(message, node=node, now=now), termination_log)
        return EXIT_BAD_INPUT

    spec_text = args.spec_json if args.spec_json is not None else os.environ.get(SPEC_ENV)
    if spec_text is None:
        message = f"no spec: pass --spec-json or set {SPEC_ENV}"
        _emit(failed_result(message, node=node, now=now), termination_log)
        return EXIT_BAD_INPUT
    try:
        spec = parse_spec_json(spec_text)
    except ValueError as exc:
        log.error("%s", exc)
        result = failed_result(str(exc), policy=policy_hint(spec_text), node=node, now=now)
        _emit(result, termination_log)
        return EXIT_BAD_INPUT

    paths = AgentPaths(
        args.proc_sys, args.proc_net, args.sysctl_dir, args.host_root, tuple(args.clean_dirs)
    )
    host_root = os.path.abspath(paths.effective_host_root())
    for flag, path in [("--sysctl-dir", paths.sysctl_dir)] + [
        ("--clean-dir", d) for d in paths.clean_dirs
    ]:
        if not Path(os.path.abspath(path)).is_relative_to(host_root):
            message = f"bad arguments: {flag} {path} is not inside --host-root"
            _emit(failed_result(message, policy=spec.policy, node=node, now=now), termination_log)
            return EXIT_BAD_INPUT
    log.info("policy %s, mode %s, node %r", spec.policy, spec.mode, node)
    try:
        result = run_agent(spec, paths, node=node, now=now)
    except Exception as exc:  # a bug: still leave a result the operator can read
        log.exception("agent crashed")
        result = failed_result(f"internal error: {exc!r}", policy=spec.policy, node=node, now=now)
    log.info("status %s", result.status)
    _emit(result, termination_log)
    return result.exit_code
