"""A stand-in trainer for reliability tests: the real SDK, no PyTorch, a few hundred ms.

The value is a deterministic function of the parameters, so a trial told twice or a result
lost would show up as a count mismatch, not as noise. Options (argv): ``--steps N``,
``--sleep S`` (seconds per step), ``--exit CODE`` (a user error after the steps),
``--hold DIR --hold-trials 1,3 --hold-at K``: the listed trials, after reporting step K, touch
``DIR/reached-<trial>`` and wait until ``DIR/release`` exists (so a test can be sure a trial is
mid-flight when it starts a fault, and choose when it goes on; after its last step such a
trial touches ``DIR/completing-<trial>`` just before it sends its result);
``--heartbeat-trials 1,3 --heartbeat-every S``: those trials send a heartbeat every S seconds
while they wait (a long, healthy step), the others wait in silence (a hung trainer).
``--attempt-drift D`` adds ``D * attempt`` to every intermediate value, so a retried attempt
reports a different curve (as nondeterministic GPU kernels or another data order would); the
final value is unchanged.
Reporter mode uses ``kubetune.trial``; TerminationMessage mode writes the message file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from kubetune import trial


def value_of(params: dict[str, object]) -> float:
    """A smooth function of the numeric parameters; categoricals add a fixed offset."""
    total = 0.0
    for key in sorted(params):
        v = params[key]
        if isinstance(v, bool):
            total += 0.5 if v else 0.0
        elif isinstance(v, int | float):
            total += float(v) % 7.0
        else:
            total += (sum(map(ord, str(v))) % 13) / 13.0
    return round(total, 6)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.1)
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--hold", default="")
    parser.add_argument("--hold-trials", default="")
    parser.add_argument("--hold-at", type=int, default=0)
    parser.add_argument("--heartbeat-trials", default="")
    parser.add_argument("--heartbeat-every", type=float, default=1.0)
    parser.add_argument("--attempt-drift", type=float, default=0.0)
    args = parser.parse_args(argv)
    number = os.environ.get("KUBETUNE_TRIAL_NUMBER", "")
    holding = bool(args.hold) and number in args.hold_trials.split(",")
    beating = number in args.heartbeat_trials.split(",")
    drift = args.attempt_drift * int(os.environ.get("KUBETUNE_TRIAL_ATTEMPT", "0"))
    params = trial.params()
    final = value_of(params)
    reporter = bool(os.environ.get("KUBETUNE_REPORT_URL"))
    for step in range(args.steps):
        time.sleep(args.sleep)
        if reporter and trial.report(final * (step + 1) / args.steps + drift, step):
            trial.pruned()
            return 0
        if holding and step == args.hold_at:
            hold(args.hold, number, args.heartbeat_every if beating else None)
    if args.exit:
        print(f"fake trainer failing on purpose with exit code {args.exit}", file=sys.stderr)
        return int(args.exit)
    if holding:
        with open(os.path.join(args.hold, f"completing-{number}"), "w"):
            pass
    if reporter:
        trial.complete(final)
    else:
        path = os.environ.get("KUBETUNE_TERMINATION_LOG", "/dev/termination-log")
        with open(path, "w") as out:
            json.dump({"values": [final]}, out)
    return 0


def hold(folder: str, number: str, heartbeat_every: float | None = None) -> None:
    with open(os.path.join(folder, f"reached-{number}"), "w"):
        pass
    beat = time.monotonic()
    while not os.path.exists(os.path.join(folder, "release")):
        if heartbeat_every is not None and time.monotonic() - beat >= heartbeat_every:
            trial.heartbeat()
            beat = time.monotonic()
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
