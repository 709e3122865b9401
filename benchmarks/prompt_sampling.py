"""Time and peak memory to sample 5,000 prompts from a generated 600k-caption COCO-format file.

    OMP_NUM_THREADS=1 python benchmarks/prompt_sampling.py [--captions 600000] [--sample 5000] [--limit-s 30]

Writes a COCO captions file (annotations[].caption, plus an images list as the real file has) to a temp
folder, then reads it through the experiment config as `prompts: {from: ..., sample: 5000, seed: 0}` in a
fresh process, and prints a table. Exits non-zero if sampling takes longer than --limit-s seconds (the issue
asks for "seconds, not minutes").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = r"""
import json, resource, sys, time
from pathlib import Path
from stitchkit.experiments.prompts import read_source
path, sample = Path(sys.argv[1]), int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after imports
start = time.perf_counter()
prompts = read_source({"from": str(path), "sample": sample, "seed": 0}, path.parent)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "python_peak_mb": after - before, "max_rss_mb": after,
                  "chosen": len(prompts.prompts), "first": prompts.indices[:3]}))
"""

WORDS = ("a man woman dog cat riding sitting standing on next to the a red blue green large small table street "
         "bus train kitchen plate of food with two people in front field grass water near building").split()


def write_coco(path: Path, captions: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        f.write('{"info": {}, "images": [')
        f.write(",".join(json.dumps({"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "height": 480,
                                     "width": 640}) for i in range(captions // 5)))
        f.write('], "annotations": [')
        f.write(",".join(json.dumps({"image_id": i // 5, "id": i,
                                     "caption": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))})
                         for i in range(captions)))
        f.write("]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=600_000)
    parser.add_argument("--sample", type=int, default=5_000)
    parser.add_argument("--limit-s", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.json"
        start = time.perf_counter()
        write_coco(path, args.captions)
        written = time.perf_counter() - start
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(args.sample)], capture_output=True,
                              text=True, env=env, timeout=600)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        m = json.loads(done.stdout)
        size_mb = path.stat().st_size / 2**20
    print("| captions | file (MB) | sample | sampling time (s) | peak RSS added (MB) | max RSS (MB) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.captions:,} | {size_mb:.0f} | {m['chosen']:,} | {m['seconds']:.2f} | "
          f"{m['python_peak_mb']:.0f} | {m['max_rss_mb']:.0f} |")
    print(f"(writing the file took {written:.1f} s; first chosen indices {m['first']}; memory = peak RSS "
          "while reading and sampling, above the process after its imports)")
    if m["seconds"] > args.limit_s:
        print(f"FAIL: sampling took {m['seconds']:.1f} s > {args.limit_s} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
