"""Act when a label holds: its score above a threshold for K predictions in a row.

    python examples/act_on_label.py --label "playing guitar" --threshold 0.6 --times 3 \
        --run 'notify-send "guitar!"'

Prints one line per action and runs --run (a shell command) if given; acts again only
after the score has dropped below the threshold. Needs only the base package
(`pip install PATH/TO/avstream`: pyzmq).
"""

import argparse
import subprocess
import sys

from stream.transport import DEFAULT_ENDPOINT, Subscriber


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT)
    p.add_argument("--label", required=True, help="a label of the model, e.g. 'playing guitar'")
    p.add_argument("--threshold", type=float, default=0.5, help="score to exceed (default 0.5)")
    p.add_argument("--times", type=int, default=3, help="predictions in a row (default 3)")
    p.add_argument("--run", help="shell command to run on each action")
    p.add_argument("--count", type=int, default=0, help="stop after N predictions (default: never)")
    args = p.parse_args()
    streak = 0
    with Subscriber(args.endpoint) as sub:
        for seen, msg in enumerate(sub, 1):  # predictions of every stream on this endpoint
            scores = {x["label"]: x["score"] for x in msg.body["labels"]}  # the top-k only
            score = scores.get(args.label, 0.0)
            streak = streak + 1 if score > args.threshold else 0
            if streak == args.times:  # == rather than >=: once per streak
                b = msg.body
                print(
                    f"{args.label} above {args.threshold} for {args.times} predictions "
                    f"({b['stream']} #{b['seq']}, score {score:.2f})",
                    flush=True,
                )
                if args.run:
                    subprocess.run(args.run, shell=True, check=False)
            if seen == args.count:
                return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
