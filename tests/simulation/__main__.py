"""``python -m tests.simulation``: run seeds in parallel processes, or replay one with its trace."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from tests.simulation.harness import Result, replay_command, run_seed
from tests.simulation.variants import VARIANTS, applied


def quiet() -> None:
    """The engine's log lines are not wanted here (the trace says what happened)."""
    import io

    from consumer.observability.logging import configure_logging

    configure_logging("critical", "console", stream=io.StringIO())


def _one(args: tuple[int, str | None]) -> Result:
    seed, variant = args
    quiet()
    with applied(variant):
        result = run_seed(seed)
    result.trace = []
    return result


def explore(
    seeds: range, *, workers: int, variant: str | None = None, stop_on_failure: bool = False
) -> tuple[list[Result], float]:
    started = time.monotonic()
    results: list[Result] = []
    if workers <= 1:
        for seed in seeds:
            results.append(_one((seed, variant)))
            if stop_on_failure and results[-1].failure:
                break
    else:
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(_one, [(s, variant) for s in seeds], chunksize=8):
                results.append(result)
    return results, time.monotonic() - started


def find(variant: str, *, most: int = 500, workers: int = 2, chunk: int = 16) -> Result | None:
    """The first seed (in order, up to ``most``) on which ``variant`` breaks an invariant."""
    with ProcessPoolExecutor(workers) as pool:
        for start in range(0, most, chunk):
            seeds = range(start, min(most, start + chunk))
            for result in pool.map(_one, [(s, variant) for s in seeds]):
                if result.failure:
                    return result
    return None


COVERAGE_KEYS = [
    ("seed_rebalance", "seeds with a rebalance that takes partitions from a live member"),
    ("seed_crash", "seeds with a process crash"),
    ("seed_outage", "seeds with an outage (Milvus, Triton or Kafka)"),
    (
        "seed_version_race",
        "seeds with a version race (an id polled at a lower version than one in flight)",
    ),
    ("seed_several_consumers", "seeds with 2-3 consumers in the group"),
    ("seed_transactions", "seeds with transactions"),
    ("seed_redrive", "seeds with a redrive"),
    ("seed_replay", "seeds with a replay (--from earliest)"),
]

COUNT_KEYS = [
    "rebalances",
    "revocations",
    "partitions_lost",
    "joins",
    "crashes",
    "crash_at",
    "crash_after_poll",
    "crash_after_infer",
    "crash_after_upsert",
    "crash_with_work_in_flight",
    "restarts",
    "sigterm",
    "second_sigint",
    "outage_milvus",
    "collection_released",
    "milvus_timeout_applied",
    "milvus_slow",
    "outage_triton",
    "triton_timeouts",
    "triton_short_answers",
    "outage_kafka",
    "commit_failures",
    "commit_slow",
    "dead_letter_retriable_errors",
    "dead_letter_non_retriable_errors",
    "dead_letter_refused_for_good",
    "version_races",
    "old_versions_produced",
    "transactions_committed",
    "transactions_aborted",
    "compacted_records",
    "log_append_time",
    "replays",
    "redrives",
    "exit_0",
    "exit_75",
    "exit_130",
    "exit_1",
]


def summary(results: list[Result], seconds: float) -> tuple[str, Counter[str]]:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r.coverage)
    n = max(1, len(results))
    lines = [
        f"{len(results)} seeds in {seconds:.1f} s "
        f"({len(results) / max(seconds, 1e-9):.1f} seeds/s), "
        f"{sum(1 for r in results if r.failure)} failed",
        "coverage:",
    ]
    for key, text in COVERAGE_KEYS:
        lines.append(f"  {100 * total[key] / n:5.1f}%  {text}")
    lines.append("counts over all seeds:")
    lines.append("  " + ", ".join(f"{k}={total[k]}" for k in COUNT_KEYS if total[k]))
    return "\n".join(lines), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation")
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--trace", action="store_true", help="print the seed's trace")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="a known-bad variant")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--find", action="store_true", help="with --variant: stop at the first seed that fails"
    )
    args = parser.parse_args(argv)
    if args.seed is not None:
        quiet()
        with applied(args.variant):
            result = run_seed(args.seed, trace=args.trace)
        if args.trace:
            print("\n".join(result.trace))
        if result.failure:
            print(f"seed {args.seed}: {result.invariant}: {result.failure}")
            return 1
        print(
            f"seed {args.seed}: every invariant held ({result.steps} steps, "
            f"{result.virtual_s:.1f} s virtual)"
        )
        return 0
    if args.find and args.variant:
        started = time.monotonic()
        found = find(args.variant, most=args.seeds, workers=args.workers)
        if found is None:
            print(f"{args.variant}: not found in {args.seeds} seeds")
            return 1
        print(
            f"{args.variant}: found at seed {found.seed} ({found.invariant}: {found.failure}) "
            f"in {time.monotonic() - started:.1f} s"
        )
        print(f"  rerun: {replay_command(found.seed, args.variant)}")
        return 0
    results, seconds = explore(
        range(args.first, args.first + args.seeds), workers=args.workers, variant=args.variant
    )
    text, _ = summary(results, seconds)
    print(text)
    failed = [r for r in results if r.failure]
    for r in failed[:20]:
        print(f"FAILED seed {r.seed}: {r.invariant}: {r.failure}")
        print(f"  rerun: {replay_command(r.seed, args.variant)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
