"""The fake SLURM fixture ``cluster`` (tests/launch/sbatch_helpers.py) for the launch tests."""

from tests.launch.sbatch_helpers import cluster  # noqa: F401 - a fixture, registered by being here
