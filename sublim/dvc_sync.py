"""Helper process for DvcSync: reads JSON lists of finished outputs on stdin, commits their DVC stages.

Same effect as `dvc commit -f STAGE`, with the repo loaded once. The run-cache entry is skipped (it re-parses
params.yaml per dependency); dvc.lock and the object cache are what `dvc repro` reads.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


DUMP_EVERY_S = 15.0  # rewrite dvc.lock at most this often (each rewrite dumps every stage: O(n) per rewrite)


def main(root: str) -> None:
    # a terminal's Ctrl-C reaches this helper too: it ends when the flow closes its input, after its last dump
    # (interrupted, it left commits unwritten, or dvc.lock half-rewritten)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from dvc.repo import Repo

    _parse_params_once()

    os.chdir(root)  # DVC resolves stage paths against the working directory
    with Repo(".") as repo:
        all_stages = list(repo.index.stages)
        pending, last_dump = [], time.monotonic()
        for line in sys.stdin:
            written = set(json.loads(line))
            stages = [s for s in all_stages if s.outs and all(str(o.def_path) in written for o in s.outs)]
            if stages:
                with repo.lock:
                    for stage in stages:
                        stage.save(run_cache=False)
                        stage.commit()
                pending += stages
            if pending and time.monotonic() - last_dump >= DUMP_EVERY_S:
                _dump(repo, pending)
                pending, last_dump = [], time.monotonic()
            print("committed", json.dumps([s.addressing for s in stages]), flush=True)  # DVC prints here too
        if pending:  # stdin closed: the flow is done
            _dump(repo, pending)


def _parse_params_once() -> None:
    """Each stage's save parses params.yaml again, for its own keys (profiled: 60% of this helper's `save`,
    ~1 CPU-s of a 37-job flow, on the cores the jobs compute on). A file is parsed once per content state
    (path, mtime, size, inode), and each caller gets its own copy, as from a fresh parse."""
    import copy

    from dvc.dependency import param

    parse, parsed = param.load_path, {}

    def load_path(fs_path, fs, **kwargs):
        try:
            st = os.stat(fs_path)
        except (OSError, TypeError, ValueError):  # not a local path: as DVC does
            st = None
        if st is None or kwargs:
            return parse(fs_path, fs, **kwargs)
        key = (fs_path, st.st_mtime_ns, st.st_size, st.st_ino)
        if key not in parsed:
            parsed[key] = parse(fs_path, fs, **kwargs)
        return copy.deepcopy(parsed[key])

    param.load_path = load_path


def _dump(repo, stages) -> None:
    """One rewrite of dvc.lock for many committed stages: rewriting it per job made a 150-job flow's
    bookkeeping outlast the jobs themselves (over 10 minutes on 2 cores)."""
    with repo.lock:
        stages[0].dvcfile.dump_stages(stages, update_pipeline=False)


if __name__ == "__main__":
    main(sys.argv[1])
