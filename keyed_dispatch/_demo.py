"""``python -m keyed_dispatch demo``: same-key order under concurrency."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence

from ._dispatcher import KeyedDispatcher
from ._keys import webhook_key


def main(argv: Sequence[str] | None = None) -> int:
    """Submit interleaved webhooks from many threads and check per-key order."""
    parser = argparse.ArgumentParser(prog="python -m keyed_dispatch demo")
    parser.add_argument("--webhooks", type=int, default=2000)
    args = parser.parse_args(argv)
    keys = [webhook_key(1, symbol) for symbol in ("BTC/USDT", "ETH/USDT", "SOL/USDT")]
    applied: dict[object, list[int]] = {key: [] for key in keys}
    admission = threading.Lock()
    sequence = dict.fromkeys(keys, 0)
    with KeyedDispatcher(8) as dispatcher:

        def fire(thread_no: int) -> None:
            for i in range(args.webhooks // 8):
                key = keys[(thread_no + i) % len(keys)]
                with admission:
                    seq = sequence[key]
                    sequence[key] += 1
                    dispatcher.submit(key, applied[key].append, seq)

        threads = [threading.Thread(target=fire, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    bad = [key for key, seqs in applied.items() if seqs != sorted(seqs)]
    for key, seqs in applied.items():
        print(f"{key!s:32} {len(seqs):6} webhooks applied, in order: {seqs == sorted(seqs)}")
    return 1 if bad else 0
