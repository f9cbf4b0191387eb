"""`fedsim run | sweep | report | plot | list | flower run | deploy | supernode`.

Bad input exits with code 2 and one line naming the key, the value and what is
allowed, before any run directory exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Only light modules here: each command imports what it runs (torch, flwr, the report stack),
# so --help, `list` and a refused scenario answer without loading what they do not use.
from fedsim.errors import RUNTIMES, RunFailed, ScenarioError

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1


def cmd_run(args: argparse.Namespace) -> int:
    from fedsim import api

    overrides = list(args.set or [])
    if args.federation and not args.runtime:
        args.runtime = "deployment"
    if args.runtime:
        overrides.append(f'runtime="{args.runtime}"')
    if args.resume:
        if overrides and not args.federation:
            raise ScenarioError("resume: --set/--runtime cannot change a run being resumed")
        result = api.resume(args.resume, quiet=args.quiet, federation=args.federation)
    elif not args.scenario:
        raise ScenarioError("scenario: missing (give a TOML file, or --resume DIR)")
    else:
        result = api.run(
            args.scenario,
            out=args.out,
            overwrite=args.overwrite,
            overrides=overrides,
            track=tracked(args.track),
            quiet=args.quiet,
            federation=args.federation,
            server_dir=args.server_dir,
            plugins=args.plugin or (),
        )
    final = result.summary["final"]
    shown = {
        k: final[k] for k in ("round", "train_loss", "eval_loss", "eval_accuracy") if k in final
    }
    print(f"{result.run_dir}: {json.dumps(shown)}")
    return 0


def tracked(text: str | None) -> list[str] | None:
    """--track tensorboard,mlflow -> the backends, checked by the scenario schema."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedsim import api

    result = api.sweep(
        args.sweep_file,
        out=args.out,
        jobs=args.jobs,
        track=tracked(args.track),
        quiet=args.quiet,
        plugins=args.plugin or (),
    )
    print(result.report)
    if args.html:
        from fedsim.html_report import write_html

        print(write_html(result.sweep_dir))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedsim.results import SUMMARY, SWEEP_RECORD

    path = Path(args.dir)
    if (path / SWEEP_RECORD).is_file():
        from fedsim.report import write_report

        print(write_report(path))
    elif not (path / SUMMARY).is_file():
        raise ScenarioError(
            f"dir: {args.dir!r} is neither a sweep ({SWEEP_RECORD}) nor a run directory ({SUMMARY})"
        )
    elif not args.html:
        raise ScenarioError(f"dir: {args.dir!r} is a run directory: its report is --html")
    if args.html:
        from fedsim.html_report import write_html

        print(write_html(path))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ScenarioError(f"run_dir: {str(run_dir)!r} has no metrics.jsonl")
    from fedsim.plots import plot_run

    for path in plot_run(run_dir):
        print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fedsim.codecs import CODEC_FAMILIES, CODECS
    from fedsim.config import load_plugins
    from fedsim.data import DATASETS
    from fedsim.method import METHODS
    from fedsim.models import MODELS, example_parameters

    load_plugins(args.plugin or ())
    if args.keys:
        from fedsim.reference import scenario_reference

        print(scenario_reference(), end="")
        return 0

    def line(e, text: str) -> str:
        return f"  {e.name:14s} {text}" + (f"  [plug-in {e.origin}]" if e.origin else "")

    print("algorithms:")
    for e in METHODS:
        print(line(e, e.doc))
    print("models:")
    for e in MODELS:
        quoted = example_parameters(e.name)
        size = f"{quoted[0]:>9,} parameters on {quoted[1].what}: " if quoted else ""
        print(line(e, size + e.doc))
    for title, reg in (("datasets", DATASETS), ("codecs", CODECS)):
        print(f"{title}:")
        for e in reg:
            print(line(e, e.doc.splitlines()[0] if e.doc else ""))
    for e in CODEC_FAMILIES:  # "name:PARAM", e.g. topk:0.01
        print(f"  {e.name + ':' + e.obj.param:14s} {e.doc}")
    print("runtimes:")
    for name in RUNTIMES:
        print(f"  {name}")
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    from fedsim.flower_apps import run_flower_app

    result = run_flower_app(
        args.app_dir,
        args.run_config,
        federation_config=args.federation_config,
        system=args.system,
        seed=args.seed,
        workers=args.workers,
    )
    for row in result.exchanges:
        print(json.dumps(row))
    clock = f", simulated clock {result.sim_time_s:.2f} s" if args.system else ""
    print(
        f"{args.app_dir}: {result.num_supernodes} SuperNodes, {result.wall_s:.2f} s{clock};"
        f" ServerApp state: {sorted(result.context.state.keys())}"
    )
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from fedsim import deploy

    try:
        if args.action == "up":
            if args.supernodes < 0:
                raise ScenarioError("--supernodes: must be 0 (SuperLink only) or more")
            dep = deploy.up(
                args.supernodes,
                args.dir,
                host=args.host,
                port=args.port,
                insecure=args.insecure,
                extra_hosts=tuple(args.san or ()),
            )
            lay = deploy.Layout(dep.root)
            mode = (
                "INSECURE (no TLS, no SuperNode authentication)"
                if dep.insecure
                else (f"TLS (CA {lay.ca_cert}), SuperNode authentication on")
            )
            print(f"SuperLink {dep.address} with {len(dep.supernodes)} SuperNodes; {mode}")
            print(f"logs: {lay.logs}   FLWR_HOME: {lay.flwr_home}")
            print(f"run:  fedsim run SCENARIO --runtime deployment --federation {dep.connection}")
            print(f"stop: fedsim deploy down --dir {args.dir}")
        elif args.action == "down":
            stopped = deploy.down(args.dir)
            print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        elif args.action == "register":
            deploy.register_supernode(args.dir, Path(args.public_key), args.name)
            print(f"registered {args.public_key} with the SuperLink of {args.dir}")
        elif args.action == "keygen":
            key = Path(args.path)
            if key.exists():
                raise ScenarioError(f"keygen: {str(key)!r} exists (not overwritten)")
            deploy.generate_node_key(key, key.with_name(key.name + ".pub"))
            print(f"private key {key} (keep it on this SuperNode), public key {key}.pub")
        else:  # connect
            home = Path(args.flwr_home or os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
            if not args.insecure and not args.root_certificates:
                raise ScenarioError("connect: --root-certificates CA_FILE (or --insecure)")
            path = deploy.write_flower_config(
                home, args.name, args.superlink, args.root_certificates, args.insecure
            )
            print(f"connection {args.name!r} -> {args.superlink} in {path}")
    except deploy.DeployError as e:
        print(f"fedsim: error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_supernode(args: argparse.Namespace) -> int:
    from fedsim.runtime.supernode import main as supernode

    supernode(args.options)
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with fedsim's errors: one line, exit code 2 (no usage block)."""

    def error(self, message: str):
        print(f"fedsim: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="fedsim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario and write a run directory")
    run.add_argument("scenario", nargs="?", help="scenario TOML file")
    run.add_argument("--resume", metavar="DIR", help="continue a killed run from its checkpoint")
    run.add_argument("--runtime", choices=RUNTIMES, help="override the scenario's runtime")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    run.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument(
        "--federation",
        metavar="NAME",
        help="SuperLink connection in FLWR_HOME's config.toml (deployment runtime; "
        "`fedsim deploy up` writes `fedsim-local` to .deploy/flwr_home)",
    )
    run.add_argument(
        "--server-dir",
        metavar="DIR",
        help="deployment runtime: where the ServerApp writes on the SuperLink's machine "
        "(default: the --out path); the run directory comes back to --out either way",
    )
    run.set_defaults(fn=cmd_run)
    sweep = sub.add_parser("sweep", help="run a sweep file: axes x seeds, one run per point")
    sweep.add_argument("sweep_file")
    sweep.add_argument("--out", help="sweep directory (default runs/sweeps/NAME)")
    sweep.add_argument("--jobs", type=int, default=1, help="worker processes")
    sweep.add_argument("--html", action="store_true", help="also write report.html")
    sweep.set_defaults(fn=cmd_sweep)
    for cmd in (run, sweep):
        cmd.add_argument(
            "--track", metavar="BACKENDS", help="log to trackers: tensorboard,mlflow,wandb"
        )
        cmd.add_argument("-q", "--quiet", action="store_true", default=None, help="no progress bar")
        cmd.add_argument(
            "--plugin",
            action="append",
            metavar="MODULE_OR_PATH",
            help="import a plug-in first: a module, a .py file or a package folder (repeatable)",
        )
    report = sub.add_parser(
        "report", help="a sweep's sweep.csv and report.md; --html: a page for a run or a sweep"
    )
    report.add_argument("dir", help="a sweep directory or a run directory")
    report.add_argument("--html", action="store_true", help="write report.html (self-contained)")
    report.set_defaults(fn=cmd_report)
    plot = sub.add_parser("plot", help="PNG plots of a run's metrics")
    plot.add_argument("run_dir")
    plot.set_defaults(fn=cmd_plot)
    listing = sub.add_parser("list", help="registered algorithms, datasets, models, codecs")
    listing.add_argument("--plugin", action="append", metavar="MODULE_OR_PATH", help="list it too")
    listing.add_argument(
        "--keys", action="store_true", help="every scenario and sweep key, as Markdown"
    )
    listing.set_defaults(fn=cmd_list)
    flower = sub.add_parser("flower", help="run any Flower App on fedsim's in-process engine")
    flower_acts = flower.add_subparsers(dest="action", required=True)
    frun = flower_acts.add_parser(
        "run",
        help="a Flower App folder, as `flwr run APP` on Flower's Simulation Engine (no Ray)",
    )
    frun.add_argument("app_dir", help="the app's folder (its pyproject.toml names the apps)")
    frun.add_argument("--run-config", help='overrides, as flwr run: "lr=0.1 epochs=2" or a .toml')
    frun.add_argument(
        "--federation-config", help='"num-supernodes=N" (default: the app\'s, else 10)'
    )
    frun.add_argument("--system", metavar="TOML", help="fedsim [system] profiles for the nodes")
    frun.add_argument("--seed", type=int, default=0, help="seeds the run's generators")
    frun.add_argument(
        "--workers", type=int, default=1, help="threads answering an exchange's messages"
    )
    frun.set_defaults(fn=cmd_flower)
    dep = sub.add_parser("deploy", help="a Flower deployment: SuperLink, SuperNodes, keys")
    acts = dep.add_subparsers(dest="action", required=True)
    up = acts.add_parser("up", help="a SuperLink and N SuperNodes on this machine")
    up.add_argument(
        "--supernodes", type=int, default=2, help="local SuperNodes to start (0: SuperLink only)"
    )
    up.add_argument("--host", default="127.0.0.1", help="address SuperNodes reach")
    up.add_argument(
        "--san", action="append", metavar="NAME_OR_IP", help="another name in the certificate"
    )
    up.add_argument("--port", type=int, default=None, help="SuperLink port (default: free)")
    up.add_argument(
        "--insecure", action="store_true", help="no TLS, no SuperNode authentication (warns)"
    )
    down = acts.add_parser("down", help="stop every process `deploy up` started")
    reg = acts.add_parser("register", help="register a SuperNode's public key (SuperLink side)")
    reg.add_argument("public_key")
    reg.add_argument("--name", help="a name for the SuperNode")
    for a in (up, down, reg):
        a.add_argument("--dir", default=".deploy", help="certs, keys, FLWR_HOME, logs, pids")
    keygen = acts.add_parser("keygen", help="a SuperNode key pair: PATH and PATH.pub")
    keygen.add_argument("path")
    conn = acts.add_parser(
        "connect", help="write a SuperLink connection to FLWR_HOME (where runs are submitted)"
    )
    conn.add_argument("--superlink", required=True, metavar="HOST:PORT")
    conn.add_argument("--root-certificates", metavar="CA_FILE", help="the deployment's ca.crt")
    conn.add_argument("--name", default="fedsim", help="the connection's name (--federation)")
    conn.add_argument("--flwr-home", help="default: $FLWR_HOME, else ~/.flwr")
    conn.add_argument("--insecure", action="store_true", help="plain HTTP (debugging only)")
    dep.set_defaults(fn=cmd_deploy)
    node = sub.add_parser(
        "supernode",
        help="fedsim's SuperNode: flower-supernode with a long-lived ClientApp process",
        description="Takes flower-supernode's options (--superlink, --root-certificates, "
        "--auth-supernode-private-key, --node-config ...); sets --isolation process itself.",
    )
    node.add_argument("options", nargs=argparse.REMAINDER, help="flower-supernode's options")
    node.set_defaults(fn=cmd_supernode)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["supernode"] and not {"-h", "--help"} & set(argv[1:2]):
        return cmd_supernode(argparse.Namespace(options=argv[1:]))  # flower-supernode's options
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except ScenarioError as e:
        if e.details:
            print(e.details.rstrip(), file=sys.stderr)
        print(f"fedsim: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as e:
        print(f"fedsim: error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
