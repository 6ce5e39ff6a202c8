"""Pack an image folder into WebDataset-style tar shards that `aetk train` / `aetk encode` read.

    .venv/bin/python scripts/make_shards.py FOLDER OUT_DIR [--shard-size 1000]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers_ae.data.tar_shards import write_shards  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("out")
    ap.add_argument("--shard-size", type=int, default=1000)
    a = ap.parse_args()
    shards = write_shards(a.folder, a.out, shard_size=a.shard_size)
    print(f"wrote {len(shards)} shards to {a.out}")
