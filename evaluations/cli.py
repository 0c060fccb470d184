"""The ``artmed`` command line: ``run`` (the study), ``defenses`` and ``attacks`` (installed plugins), ``label``,
``bench``, ``separation`` (BadDist over seeds)."""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from artmed.evaluations.config import StudyConfig


def _run(args: argparse.Namespace) -> int:
    """``artmed run``: a bad config, option or output folder is reported as ``artmed run: error: ...`` (exit status
    2) before any work. Under ``torchrun --nproc_per_node=N -m artmed.evaluations.cli run ...`` every rank runs the
    study, training data-parallel, and rank 0 writes and prints."""
    from artmed.distributed import init_from_env, is_main_process, shutdown
    from artmed.evaluations.study import run_study, summary
    from artmed.progress import console_warnings

    init_from_env()  # under torchrun: join the process group (training runs data-parallel); otherwise nothing
    main_process = is_main_process()
    options = {
        "verbose": not args.quiet,
        "reuse_stale": args.reuse_stale,
        "workers": args.workers,
        "threads": args.threads,
        "address": args.ray_address,
    }
    try:
        with console_warnings(quiet=args.quiet):
            if args.preset == "regime":
                return _run_regime(args, options)
            result, paths = run_study(_study_config(args), **options)
    except ValueError as exc:
        print(f"artmed run: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    status = 130 if result.interrupted else 1 if result.failed else 0
    if not main_process:
        return status
    print(summary(result))
    print(f"\nTables and figures in {result.output_dir}/ (models.csv, defenses.csv, figures/)")
    return status


def _run_regime(args: argparse.Namespace, options: Mapping[str, Any]) -> int:
    """``artmed run --preset regime``: one study per training-set size (``artmed.evaluations.regime``), from the
    built-in regime or a ``--config`` regime file (a study config with a ``regime:`` mapping), then the regime's
    tables and figures in the output folder. The options apply to the study every size starts from, as
    ``_study_config`` applies them to a study."""
    from artmed.evaluations.regime import Regime, load_regime, run_regime

    output = args.output or "artmed-regime"
    regime, loaded = load_regime(args.config, protocol=args.protocol) if args.config else (Regime(), None)
    result = run_regime(output, regime.configs(output, _study_config(args, loaded)), regime, **options)
    print(result.paths["summary"].read_text())
    print(f"\nRegime tables and figures in {output}/ (regime_summary.md, regime_models.csv, figures/)")
    return 130 if result.interrupted else 1 if result.failed else 0


def _study_config(args: argparse.Namespace, loaded: StudyConfig | None = None) -> StudyConfig:
    """The study ``artmed run`` was asked for: the ``--config`` file (``loaded`` when the caller read it) or a
    preset, with the options applied and checked."""
    from dataclasses import replace

    from artmed.evaluations.config import StudyConfig
    from artmed.evaluations.study import default_config, quick_config, sweep_config

    if args.config:
        config = loaded or StudyConfig.from_yaml(args.config, protocol=args.protocol)
        if args.output:
            config.output_dir = args.output
        if args.seed is not None:
            config.seed, config.seeds = args.seed, []
        if args.seeds is not None:
            config.seeds = list(range(config.seed, config.seed + args.seeds))
    else:
        presets = {"default": default_config, "sweep": sweep_config, "quick": quick_config, "regime": default_config}
        preset = presets[args.preset]  # the regime's studies start from the default one
        default_output = "artmed-output" if args.preset == "default" else f"artmed-{args.preset}"
        counts = {} if args.seeds is None else {"n_seeds": args.seeds}
        config = preset(args.output or default_output, seed=args.seed or 0, **counts)
        if args.protocol:
            config = config.with_protocol(args.protocol)
    if args.device:
        config.device = args.device
    return replace(config)  # the options' values checked like the file's


def _defenses(args: argparse.Namespace) -> int:
    """``artmed defenses``: each installed defense's name, kind, class, description and parameters (with their
    defaults), read from the plugins' source without importing torch; with ``--import`` every plugin is imported
    (slow) and one that fails to load is listed as BROKEN with its error."""
    from artmed.defenses import registry

    _print_plugins(*registry.describe_all(load=args.load), kind_width=10)
    return 0


def _attacks(args: argparse.Namespace) -> int:
    """``artmed attacks``: each installed attack step's name, kind, class, description and parameters (read from
    the plugins' source without importing torch), then the shorthands' compositions; a step that fails to load is
    listed as BROKEN with its error."""
    from artmed.attacks import registry

    _print_plugins(*registry.describe_all(), kind_width=12)
    print("shorthands: " + "; ".join(f"{name} = [{', '.join(steps)}]" for name, steps in registry.SHORTHANDS.items()))
    return 0


def _print_plugins(infos: Sequence[Any], errors: Mapping[str, str], kind_width: int) -> None:
    """The listing of ``artmed defenses`` / ``artmed attacks``: per plugin its name, kind and class, the first
    paragraph of its description and its parameters (wrapped to the terminal), then the broken ones with their error."""
    width = max(40, min(shutil.get_terminal_size().columns, 120))
    for info in infos:
        print(f"{info.name:28s} {info.kind:{kind_width}s} {info.target}")
        for paragraph in _paragraphs(info.doc)[:1]:
            print(textwrap.fill(paragraph, width, initial_indent="    ", subsequent_indent="    "))
        params = ", ".join(f"{name}={default}" if default else name for name, default in info.params.items())
        print(
            textwrap.fill(
                f"parameters: {params or 'none'}",
                width,
                initial_indent="    ",
                subsequent_indent="        ",
                break_on_hyphens=False,
            )
        )
        print()
    for name, error in errors.items():
        print(f"{name:28s} {'BROKEN':{kind_width}s} {error}")


def _paragraphs(doc: str) -> list[str]:
    """A docstring's paragraphs, each joined into one line."""
    return [" ".join(block.split()) for block in doc.split("\n\n") if block.strip()]


def _version() -> str:
    """The installed distribution's version (``importlib.metadata``), or the source tree's when not installed."""
    from importlib import metadata

    try:
        return metadata.version("artmed")
    except metadata.PackageNotFoundError:
        from artmed import __version__

        return __version__


def _label(args: argparse.Namespace) -> int:
    from artmed.data.labeler import main as label_main

    return label_main(args.rest)


def _bench(args: argparse.Namespace) -> int:
    from artmed.evaluations.bench import main as bench_main

    return bench_main(args.rest)


def _separation(args: argparse.Namespace) -> int:
    from artmed.evaluations.separation import main as separation_main

    return separation_main(args.rest)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artmed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"artmed {_version()}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the attack + defense study (default: the built-in CPU study)")
    run.add_argument("--config", help="a YAML study config (see artmed.evaluations.config.StudyConfig)")
    run.add_argument(
        "--preset",
        choices=["default", "sweep", "quick", "regime"],
        default="default",
        help="built-in study when no --config: default (minutes), sweep (poison-rate grid), regime (rate against "
        "count: one study per training-set size; with --config, a regime file: a study config with a regime: "
        "mapping), quick",
    )
    run.add_argument("--output", help="output folder (finished cells there are reused: runs resume)")
    run.add_argument("--seed", type=int, help="study seed, or the first of --seeds (default: the config's, or 0)")
    run.add_argument(
        "--seeds",
        type=_positive,
        help="run every cell for this many seeds: --seed, --seed + 1, ... "
        "(default: the preset's, 3; or the config's seeds)",
    )
    run.add_argument(
        "--protocol",
        choices=["artmed", "released"],
        help="released: the authors' released settings wherever artmed's differ (a --config file's own "
        "values still win; a preset's are replaced)",
    )
    run.add_argument(
        "--reuse-stale",
        action="store_true",
        help="keep finished cells computed by other artmed code (default: recompute them)",
    )
    run.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (default: the config's, auto)")
    run.add_argument(
        "--workers",
        type=_positive,
        help="compute independent cells (each attacked model with its defenses) in this many processes through "
        "Ray (pip install 'artmed[ray]'); the tables are those of --workers 1 (default: on the CPU with Ray "
        "installed, one per --threads cores, at most one per attacked model; else 1)",
    )
    run.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="torch and BLAS threads per cell, the same for every worker (default: 1, so the numbers do not depend "
        "on the machine's core count); it changes floating-point results, so compare runs made with the same value",
    )
    run.add_argument(
        "--ray-address",
        help="run the cells on this running Ray cluster (e.g. auto, or ray://head:10001) instead of local "
        "processes; artmed must be installed on its nodes and the output folder on a shared file system",
    )
    run.add_argument("--quiet", action="store_true", help="print the result tables only (no progress, no warnings)")
    run.set_defaults(func=_run)
    defenses = sub.add_parser("defenses", help="list the installed defense plugins, their descriptions and parameters")
    defenses.add_argument(
        "--import",
        dest="load",
        action="store_true",
        help="import every plugin (slow: loads torch) and list those that fail as BROKEN",
    )
    defenses.set_defaults(func=_defenses)
    attacks = sub.add_parser("attacks", help="list the installed attack steps, their descriptions and parameters")
    attacks.set_defaults(func=_attacks)
    label = sub.add_parser(
        "label", help="write MedCLIP's sentence-label.csv from reports (artmed label SRC OUT.csv)", add_help=False
    )
    label.add_argument("rest", nargs=argparse.REMAINDER)
    label.set_defaults(func=_label)
    bench = sub.add_parser("bench", help="benchmarks against ART (artmed bench --help)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    separation = sub.add_parser(
        "separation", add_help=False, help="does BadDist separate triggered embeddings? (artmed separation --help)"
    )
    separation.add_argument("rest", nargs=argparse.REMAINDER)
    separation.set_defaults(func=_separation)
    for command in sub.choices.values():
        command.set_defaults(command_parser=command)  # a bad option is reported with the subcommand's own usage
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``artmed`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if hasattr(args, "rest"):  # argparse.REMAINDER leaves leading options (--help, --sizes ...) unparsed
        args.rest = unknown + args.rest
    elif unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, ImportError) as exc:
        print(f"artmed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
