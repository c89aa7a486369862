"""Small real data sets that need no download, rendered as image folders.

    python -m pipelines.data.sample sklearn-digits DEST [--size 32]

``sklearn-digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes),
upscaled and written as ``DEST/digit_<n>/<i>.png``: an unsplit image folder that
``scripts/preprocess.py`` splits like any other data set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = ("sklearn-digits",)


def render_sklearn_digits(dest: str | Path, size: int = 32) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    dest = Path(dest)
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        folder = dest / f"digit_{target}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (255 - image * (255 / 16)).round().astype(np.uint8)  # dark ink on white
        Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(
            folder / f"{i:04d}.png")
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("dest")
    parser.add_argument("--size", type=int, default=32, help="side of the rendered images")
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error("--size must be at least 8")
    out = render_sklearn_digits(args.dest, args.size)
    count = sum(1 for _ in out.rglob("*.png"))
    print(f"wrote {count} images in {len(list(out.iterdir()))} class folders to {out}")
    return 0


if __name__ == "__main__":
    from pipelines import cli

    cli.run(main)
