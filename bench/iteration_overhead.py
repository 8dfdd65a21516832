"""What Prefect adds to an iteration: a nested flow run of two tasks that only wait, timed as
metis runs each iteration (`flows.iterations.as_iteration`) and as a plain Prefect subflow.

Prefect 3.7 starts a heartbeat thread for every flow run and, as the run ends, waits for that
thread to notice in 1-second sleeps, so a plain subflow ends on the next whole second after its
work. metis runs its iterations without heartbeats (flows/iterations.py). Each row: the work
(seconds the two tasks wait), then the best of --repeat wall times of each kind of nested flow
run, on a temporary Prefect server (or PREFECT_API_URL's).

    .venv/bin/python bench/iteration_overhead.py --work 0.3 0.55 0.8 1.05 1.3 --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=float, nargs="+", default=[0.3, 0.55, 0.8, 1.05, 1.3])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from flows.process import prefect_environment

    prefect_environment(tempfile.mkdtemp(prefix="metis-iteration-overhead-"))  # as `metis` does

    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.iterations import as_iteration

    @task(cache_policy=NO_CACHE, persist_result=False)
    def wait(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def iteration(work: float) -> float:
        return wait(work / 2) + wait(work / 2)

    def plain(step: int) -> Callable[[float], float]:
        iteration.__name__ = iteration.__qualname__ = f"plain_step{step}"
        return flow(iteration, name="plain-subflow", persist_result=False)

    def best(make: Callable[[int], Callable[[float], float]], work: float) -> float:
        times = []
        for step in range(args.repeat):
            start = time.perf_counter()
            make(step)(work)
            times.append(time.perf_counter() - start)
        return min(times)

    @flow(name="iteration-overhead", persist_result=False)
    def measure() -> list[tuple[float, float, float]]:
        return [
            (
                work,
                best(plain, work),
                best(lambda step, w=work: as_iteration(iteration, step), work),
            )
            for work in args.work
        ]

    rows = measure()
    print("| work s | plain Prefect subflow s | metis iteration flow s |")
    print("| --- | --- | --- |")
    for work, plain_s, metis_s in rows:
        print(f"| {work:.2f} | {plain_s:.3f} | {metis_s:.3f} |")


if __name__ == "__main__":
    main()
