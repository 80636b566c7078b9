"""Where a command's memory peaks: runs one `landscape` command in this process while a thread samples
the resident size (RSS) and the main thread's stack, then prints the peak, the places that reached the
highest RSS, and a timeline.

    .venv/bin/python benchmarks/memprofile.py sweep --checkpoint gpt2 --data tokens.pt --x -1:1:7 -o s.h5

How issue 20's sweep peaks were found: the file built in memory at creation and read back whole when
marked complete, and the probe's one-point vmap. RSS counts freed memory the allocator keeps (up to
1 GiB for models under 256 MB, `landscape/host.py`), so a place is where the peak was reached, not
necessarily what holds it; `gc`'s live tensors tell the rest. The figures of record come from
`benchmarks/scale.py`, one process per command, peak RSS from the kernel.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def main(argv: list[str], every: float = 0.01) -> None:
    main_thread = threading.get_ident()
    samples: list[tuple[float, int, str]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not done.is_set():
            frame = sys._current_frames().get(main_thread)
            stack = traceback.extract_stack(frame) if frame is not None else []
            ours = [f"{os.path.basename(s.filename)}:{s.lineno}:{s.name}" for s in stack if "landscape" in s.filename]
            samples.append((time.perf_counter() - t0, rss(), " < ".join(reversed(ours[-5:]))))
            time.sleep(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from landscape.cli import main as landscape_main

    sys.argv = ["landscape", *argv]
    try:
        landscape_main()
    except SystemExit:
        pass
    finally:
        done.set()
        thread.join()
    if not samples:
        return
    t, peak, where = max(samples, key=lambda s: s[1])
    print(f"peak {peak / 2**30:.2f} GiB at {t:.1f} s in {where or '-'}")
    highest: dict[str, tuple[int, float, str]] = {}
    for t, r, where in samples:
        key = where.split(" < ")[0] if where else "-"
        if r > highest.get(key, (0, 0.0, ""))[0]:
            highest[key] = (r, t, where)
    print("the places that reached the highest RSS:")
    for r, t, where in sorted(highest.values(), reverse=True)[:12]:
        print(f"  {r / 2**30:6.2f} GiB {t:7.1f} s  {where[:200]}")
    print("timeline:")
    last = -float("inf")
    step = max(samples[-1][0] / 20, every)
    for t, r, where in samples:
        if t - last >= step:
            last = t
            print(f"  {t:7.1f} s {r / 2**30:6.2f} GiB  {where[:150]}")


if __name__ == "__main__":
    main(sys.argv[1:])
