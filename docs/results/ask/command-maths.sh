#!/bin/bash
# KINDS2_MATHS: the maths x misalignment workspace (docs/results/kinds/)

sublim ask  misaligned=KINDS2_MATHS/data/lm/s0/g1-trait/kept control=KINDS2_MATHS/data/lm/s0/g1-control/kept misaligned=KINDS2_MATHS/data/lm/s1/g1-trait/kept control=KINDS2_MATHS/data/lm/s1/g1-control/kept misaligned=KINDS2_MATHS/data/lm/s2/g1-trait/kept control=KINDS2_MATHS/data/lm/s2/g1-control/kept misaligned=KINDS2_MATHS/data/lm/s3/g1-trait/kept control=KINDS2_MATHS/data/lm/s3/g1-control/kept misaligned=KINDS2_MATHS/data/lm/s4/g1-trait/kept control=KINDS2_MATHS/data/lm/s4/g1-control/kept --json > maths.json
