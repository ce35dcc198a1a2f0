"""Out-of-scope detection of a saved run: adapt on a support file, choose the abstention threshold on validation
files that hold out-of-scope rows, and score test files: in-scope accuracy without and with abstention, and
out-of-scope recall and precision, each with a 95% interval over its rows.

    D=../shared/data/intents/clinc150/full_label_set
    python scripts/open_set.py --run outputs/... --support $D/train_5.jsonl \\
        --validation $D/valid.jsonl,$D/oos_valid.jsonl --test $D/test.jsonl,$D/oos_test.jsonl
"""

from __future__ import annotations

import argparse
import shlex
import sys

from metarun import load
from metarun.abstain import abstained
from metarun.data import load_local
from metarun.stats import mean_with_ci


def rate(hits: list[bool]) -> str:
    result = mean_with_ci([float(h) for h in hits])
    return f"{100 * result.mean:.1f} ± {100 * result.ci95:.1f} ({len(hits)} rows)"


def main(argv: list[str] | None = None) -> str:
    files = lambda text: [f for f in text.split(",") if f]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--support", required=True, help="the labelled file adapted on (in-scope labels only)")
    parser.add_argument("--validation", type=files, required=True, help="files whose rows choose the threshold")
    parser.add_argument("--test", type=files, required=True, help="the files scored")
    parser.add_argument("--oos-label", default="oos")
    args = parser.parse_args(argv)
    support = load_local(args.support)
    adapted = load(args.run).adapt(support.texts, support.labels)
    validation = load_local(args.validation)
    threshold = adapted.choose_oos_threshold(validation.texts, validation.labels, args.oos_label)
    test = load_local(args.test)
    probabilities = adapted.predict_proba(test.texts)
    closed, open_set = (abstained(probabilities, adapted.labels, t, args.oos_label) for t in (0.0, threshold))
    in_scope = [i for i, y in enumerate(test.labels) if y != args.oos_label]
    oos = [i for i, y in enumerate(test.labels) if y == args.oos_label]
    said_oos = [i for i, p in enumerate(open_set) if p == args.oos_label]
    command = shlex.join(["python", "scripts/open_set.py", *(argv if argv is not None else sys.argv[1:])])
    body = "\n".join([
        f"Command: `{command}`", "",
        f"- threshold on the top probability, chosen on {len(validation)} validation rows: {threshold:.4f}",
        f"- in-scope accuracy without abstention: {rate([closed[i] == test.labels[i] for i in in_scope])}",
        f"- in-scope accuracy with abstention: {rate([open_set[i] == test.labels[i] for i in in_scope])}",
        f"- out-of-scope recall: {rate([open_set[i] == args.oos_label for i in oos])}",
        f"- out-of-scope precision: {rate([test.labels[i] == args.oos_label for i in said_oos])}",
    ]) + "\n"  # fmt: skip
    print(body)
    return body


if __name__ == "__main__":
    main()
