"""The benchmarks' text corpora: the readers live in ``app.demo.corpora`` (the demo builder uses
them too, and nothing in ``app`` may import ``bench``). ``python -m bench.corpora fetch|summary``
still works."""
from __future__ import annotations

from app.demo.corpora import *  # noqa: F403 - the public readers, samplers and tables
from app.demo.corpora import _main

if __name__ == "__main__":
    _main()
