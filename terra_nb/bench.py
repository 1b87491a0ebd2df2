"""``terra-nb bench``: placeholder replaced below."""


def add_arguments(parser) -> None:
    parser.add_argument("--programs", default="")


def run_bench(args) -> int:
    raise SystemExit("terra-nb bench: not built yet")
