"""GRACE training: `python -m grace.train [Hydra overrides]`, the reference's train.sh overrides as written.

The config is verl 0.4.1's own `ppo_trainer.yaml`, read from the installed verl; GRACE adds keys with `+`:
`+data.train_mode`, `+reward_model.reward_kwargs.*` (temperature, with_scale, clustering_weight,
cross_group_weight, variant, rationale_temperature, pooling_span, ...), `+trainer.metrics_file` and
`+trainer.cpu_dtype`. On a machine without CUDA, Ray gets placeholder GPUs, every process applies
`grace.verl_ext.cpu_compat`, and the compute dtype is the one the CPU runs fast (float32 unless it has native
bf16; `+trainer.cpu_dtype=float32|bfloat16` forces one).
"""

import hydra
import ray

from grace.verl_ext.cpu_compat import configure_cpu_run, init_ray


def run_grace(config) -> None:
    """Train with an already composed config; starts (and then stops) a local Ray cluster if none is running."""
    configure_cpu_run(config)
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
