"""`python -m mpo_dist.cli ...`, what torchrun and srun start (launch/train.sh, slurm/train.sbatch)."""
import sys

from mpo_dist.cli import main

sys.exit(main())
