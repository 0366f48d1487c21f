"""``python benchmarks/_run_without_hooks.py HOOKS [run arguments]``: ``python -m adadim_dist.run`` with some of
the service's private Ray hooks turned off, to measure what each buys (``job_phases.py``'s ``after_without_*``
variants). HOOKS, comma-separated:

- ``datasets_callback``: Ray Train's own TorchTrainer, with its Ray Data hook (``driver.torch_trainer_class``);
- ``autoscaling_coordinator``: the coordinator started by Train's controller when it first asks, not ahead of
  time by the driver (``driver.start_autoscaling_coordinator``).
"""

from __future__ import annotations

import sys

HOOKS = ("datasets_callback", "autoscaling_coordinator")


def main() -> int:
    hooks, arguments = sys.argv[1].split(","), sys.argv[2:]
    if unknown := set(hooks) - set(HOOKS):
        raise SystemExit(f"unknown hooks {sorted(unknown)}; choose from {', '.join(HOOKS)}")
    from ray.train.torch import TorchTrainer

    from adadim_dist import run
    from adadim_dist.training import driver

    if "datasets_callback" in hooks:
        driver.torch_trainer_class = lambda: TorchTrainer
    if "autoscaling_coordinator" in hooks:
        driver.start_autoscaling_coordinator = lambda: None
    return run.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
