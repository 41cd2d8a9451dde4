"""Helper process for DvcSync: reads JSON lists of finished outputs on stdin, commits their DVC stages.

Same effect as `dvc commit -f STAGE`, with the repo loaded once. The run-cache entry is skipped (it re-parses
params.yaml per dependency); dvc.lock and the object cache are what `dvc repro` reads.
"""

from __future__ import annotations

import json
import os
import sys


def main(root: str) -> None:
    from dvc.repo import Repo

    os.chdir(root)  # DVC resolves stage paths against the working directory
    with Repo(".") as repo:
        all_stages = list(repo.index.stages)
        for line in sys.stdin:
            written = set(json.loads(line))
            stages = [s for s in all_stages if s.outs and all(str(o.def_path) in written for o in s.outs)]
            if stages:
                with repo.lock:
                    for stage in stages:
                        stage.save(run_cache=False)
                        stage.commit()
                    stages[0].dvcfile.dump_stages(stages, update_pipeline=False)
            print("committed", json.dumps([s.addressing for s in stages]), flush=True)  # DVC prints here too


if __name__ == "__main__":
    main(sys.argv[1])
