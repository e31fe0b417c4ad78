"""`python -m mpo_dist.cli ...`, what torchrun and srun start (launch/train.sh, slurm/train.sbatch)."""
from mpo_dist.cli import run

run()
