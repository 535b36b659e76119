"""GRACE training: `python -m grace.train [Hydra overrides]`, the reference's train.sh overrides as written.

The config is verl 0.4.1's own `ppo_trainer.yaml`, read from the installed verl; GRACE adds keys with `+`:
`+data.train_mode`, `+reward_model.reward_kwargs.*` (temperature, with_scale, clustering_weight,
cross_group_weight, variant, rationale_temperature, ...) and `+trainer.metrics_file`. On a machine without
CUDA, Ray gets placeholder GPUs and every process applies `grace.verl_ext.cpu_compat`.
"""

import hydra
import ray

from grace.verl_ext.cpu_compat import init_ray


def run_grace(config) -> None:
    """Train with an already composed config; starts (and then stops) a local Ray cluster if none is running."""
    started_ray = not ray.is_initialized()
    init_ray(num_cpus=config.ray_init.num_cpus, num_gpus=config.trainer.n_gpus_per_node * config.trainer.nnodes)
    from grace.verl_ext.task_runner import GraceTaskRunner

    try:
        ray.get(GraceTaskRunner.remote().run.remote(config))
    finally:
        if started_ray:
            ray.shutdown()


@hydra.main(config_path="pkg://verl.trainer.config", config_name="ppo_trainer", version_base=None)
def main(config) -> None:
    run_grace(config)


if __name__ == "__main__":
    main()
