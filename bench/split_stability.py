"""How many images change split when one image is added to an unsplit class: preprocess.py's
hash split against the shuffle-per-class split it replaced (the baseline, run here too).

    .venv/bin/python bench/split_stability.py [--trials 300] [--sizes 10 30 60 200]

Each trial: a class of N random file names, split; one more name added, split again; counts
the images (of the N) whose split changed, and those that went from test to train. Pure
computation on names, no images; seconds.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import preprocess  # noqa: E402


def shuffled_split(names, seed, valid_ratio, test_ratio):
    """The old rule: shuffle the whole class (seeded by class), cut by rounded counts."""
    members = sorted(names)
    n_valid = max(1, round(len(members) * valid_ratio))
    n_test = max(1, round(len(members) * test_ratio))
    random.Random(f"{seed}/c").shuffle(members)
    return {m: "valid" if k < n_valid else "test" if k < n_valid + n_test else "train"
            for k, m in enumerate(members)}


def hashed_split(names, seed, valid_ratio, test_ratio):
    items = [preprocess.Item(f"c/{name}", "", 1, None, "c") for name in names]
    preprocess.assign_splits(items, "unsplit", seed, valid_ratio, test_ratio)
    return {i.rel[2:]: i.split for i in items}


def measure(split, size, trials, rng, ratios):
    moved = any_moved = test_to_train = 0
    for _ in range(trials):
        names = [f"{rng.getrandbits(48):x}.jpg" for _ in range(size)]
        before = split(names, 42, *ratios)
        after = split(names + [f"{rng.getrandbits(48):x}.jpg"], 42, *ratios)
        changed = [n for n in names if before[n] != after[n]]
        moved += len(changed)
        any_moved += bool(changed)
        test_to_train += sum(before[n] == "test" and after[n] == "train" for n in changed)
    return moved / trials, any_moved / trials, test_to_train / trials


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 60, 200])
    p.add_argument("--valid-ratio", type=float, default=0.1)
    p.add_argument("--test-ratio", type=float, default=0.1)
    args = p.parse_args(argv)
    ratios = (args.valid_ratio, args.test_ratio)
    print(f"{'class size':>10}  {'images moved per added image':>30}  "
          f"{'additions moving any':>20}  {'test->train per addition':>24}")
    for size in args.sizes:
        old = measure(shuffled_split, size, args.trials, random.Random(size), ratios)
        new = measure(hashed_split, size, args.trials, random.Random(size), ratios)
        print(f"{size:>10}  {new[0]:>12.3f} vs {old[0]:>6.2f} (shuffle)  "
              f"{new[1]:>8.0%} vs {old[1]:>5.0%}  {new[2]:>10.3f} vs {old[2]:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
