"""What the benches share: a figure beside its baseline with its target met or not, and the modes a bench runs.

A bench (serve_bench.py, train_bench.py, image_bench.py) is a set of modes, each runnable alone
(`--mode NAME`) or together (`--mode a,b`); a mode prints its measurements as it goes and returns its Figures,
printed again at its end. With `--figures FILE` the bench writes them as JSON: bench/run.py (`make bench`)
keeps them in bench/results/, and scripts/gen-readme-tables.sh writes docs/performance.md and README's
Performance table from there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    """One measured figure. `key` is stable (README's table picks figures by it); `ours` and `baseline` are
    formatted with their units; `ratio` is ours over the baseline (or as `what` says); `target` the bar it must
    clear ("" when there is none) and `met` whether it did."""

    key: str
    what: str
    ours: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None

    def line(self) -> str:
        parts = [self.ours] + ([self.baseline] if self.baseline else [])
        if self.ratio is not None:
            parts.append(f"ratio {self.ratio:.3f}")
        goal = f" [{self.target}] {'met' if self.met else 'NOT met'}" if self.target else ""
        return f"  {self.what}: {', '.join(parts)}{goal}"


def at_least(key: str, what: str, ours: str, baseline: str, ratio: float, target: float | None) -> Figure:
    """A ratio to a baseline, with `target` as its floor (None: shown, no target)."""
    if target is None:
        return Figure(key, what, ours, baseline, ratio)
    return Figure(key, what, ours, baseline, ratio, f">= {target:.2f}", ratio >= target)


def below(key: str, what: str, value: float, unit: str, limit: float | None) -> Figure:
    """An absolute figure with `limit` as its ceiling (None: shown, no target)."""
    ours = f"{value:,.2f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    if limit is None:
        return Figure(key, what, ours)
    return Figure(key, what, ours, target=f"< {limit:g} {unit}", met=value < limit)


@dataclass
class Mode:
    """A bench mode: `run(context)` measures and returns its figures; `defaults` are the options it is
    measured with unless the command line says otherwise (rounds, seconds...)."""

    run: Callable[[Any], list[Figure]]
    help: str
    defaults: dict[str, Any] | None = None


def main(description: str, modes: dict[str, Mode], default: list[str],
         add_arguments: Callable[[argparse.ArgumentParser], None], context: Callable[[argparse.Namespace], Any]
         ) -> None:
    """The command line of a bench: parse, run each mode asked for with its own defaults, print and write its
    figures. `context(args)` is the set-up the modes share (made once, passed to each)."""
    parser = argparse.ArgumentParser(description=description,
                                     epilog="modes: " + "; ".join(f"{n}: {m.help}" for n, m in modes.items()))
    parser.add_argument("--mode", default=",".join(default), help="comma-separated (default: %(default)s)")
    parser.add_argument("--list-modes", action="store_true", help="print the default modes and exit")
    parser.add_argument("--figures", type=Path, help="write the figures of the modes run to this JSON file")
    add_arguments(parser)
    args = parser.parse_args()
    if args.list_modes:
        print("\n".join(default))
        return
    chosen = [m.strip() for m in args.mode.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in modes]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(modes)}")
    given = {name: value for name, value in vars(args).items() if value is not None}
    print(f"uptime at the start: {uptime()}", flush=True)
    shared = context(args)
    figures: list[Figure] = []
    for name in chosen:
        mode = modes[name]
        for option, value in (mode.defaults or {}).items():
            setattr(args, option, given.get(option, value))
        print(f"\n##### {name}: {mode.help}", flush=True)
        found = mode.run(shared)
        print(f"\n{name}: figures and targets")
        for figure in found:
            print(figure.line())
        figures += found
    print(f"\nuptime at the end: {uptime()}")
    if args.figures:
        args.figures.write_text(json.dumps([asdict(f) for f in figures], indent=1))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
