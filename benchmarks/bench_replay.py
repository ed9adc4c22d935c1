"""Replay buffer (in-process): inserts/s in actor-sized chunks, and sampled transitions/s with
priority updates at batch 32 and 256, at 84x84 frames stored once."""

from __future__ import annotations

import numpy as np

from actor.chunks import ChunkBuilder
from benchmarks.common import machine, parser, rate
from replay_server.buffer import PrioritizedReplay


def make_chunks(count: int, chunk_size: int, rng) -> list[dict]:
    builder, chunks = ChunkBuilder(4), []
    builder.start_episode(rng.integers(0, 255, (84, 84), dtype=np.uint8))
    while len(chunks) < count:
        builder.add(rng.integers(0, 255, (84, 84), dtype=np.uint8), int(rng.integers(7)), 0.1, False, False)
        if len(builder) == chunk_size:
            chunks.append(builder.take())
    return chunks


def main() -> None:
    args = parser(__doc__).parse_args()
    capacity = 10_000 if args.smoke else 100_000
    seconds = 0.5 if args.smoke else 5.0
    print(f"machine: {machine()}; capacity {capacity:,}")
    rng = np.random.default_rng(0)
    buffer = PrioritizedReplay(capacity, 84, 4, alpha=0.6, num_actions=7)
    chunks = make_chunks(64, 64, rng)
    i = 0

    def insert():
        nonlocal i
        c = chunks[i % len(chunks)]
        i += 1
        buffer.add_chunk(c["frames"], c["stack"], c["actions"], c["rewards"], c["bootstraps"])

    per_s = rate(insert, seconds)
    print(
        f"insert: {per_s * 64:10.0f} transitions/s (chunks of 64); buffer holds {len(buffer):,}, "
        f"{buffer.nbytes() / capacity:.0f} bytes/transition"
    )
    while buffer.inserted < capacity:
        insert()
    for batch_size in (32, 256):

        def sample_and_update():
            batch = buffer.sample(batch_size, 0.4, rng)
            buffer.update_priorities(batch.ids, rng.random(batch_size) + 1e-3)

        per_s = rate(sample_and_update, seconds)
        print(f"sample+update batch {batch_size:>3}: {per_s * batch_size:10.0f} transitions/s")


if __name__ == "__main__":
    main()
