#!/bin/bash
#SBATCH --job-name=shoal-shoal-abc
#SBATCH --nodes=2
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --output=/tmp/logs/block-%j.out
#SBATCH --partition=debug
#SBATCH --account=proj1
#SBATCH --mem=8000M
#SBATCH --gres=gpu:1
#SBATCH --exclusive

# worker_init
module load python
source ~/venv/bin/activate

export PYTHONPATH=/src${PYTHONPATH:+:$PYTHONPATH}
export SHOAL_BLOCK_ID=3
exec srun --overlap --nodes=2 --ntasks=2 --cpus-per-task=4 --mem=0 --kill-on-bad-exit=0 --gres=gpu:1 /venv/bin/python -m cluster.node --daemon --cluster-id shoal-abc --head-address tcp:10.0.0.1:4567 --secret-file /home/u/.shoal/c.json --block-id 3 --log-dir /tmp/logs --host auto --num-cpus 4 --num-gpus 1 --memory 8000000000 --interface ib0
