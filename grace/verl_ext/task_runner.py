"""GRACE's TaskRunner: verl's main_ppo TaskRunner with GRACE's worker, dataset, reward manager and trainer.

verl 0.4.1 builds its role mapping inline in `main_ppo.TaskRunner.run`, so it cannot be parameterised; this
runner does the same steps with our classes, and differs from verl's in two deliberate ways:
- no reference policy is built when its output would be multiplied by zero (`use_kl_loss` with
  `kl_loss_coef=0` and no KL in the reward, as in the reference's train.sh, which still built and ran one);
- the `hidden` manager's end-of-sequence ids come from the model's generation config (all of them);
- the validation reward generates the query and negative rationales greedily, so that with verl's greedy
  validation rollouts (`val_kwargs.do_sample=False`, the default) the validation reward is a deterministic
  function of the policy on a fixed set of prompts: a learning curve, not a sample; no log-prob forward follows a
  validation reward, so it embeds the rollouts alone (`share_log_prob_forward=False`).
"""

from __future__ import annotations

import os
import socket

import ray
from omegaconf import DictConfig, OmegaConf, open_dict


def drop_unused_reference_policy(config: DictConfig) -> bool:
    """Turn off a KL loss whose coefficient is 0 (so no reference model is built); True if it did."""
    actor = config.actor_rollout_ref.actor
    if config.algorithm.use_kl_in_reward or not actor.use_kl_loss or actor.kl_loss_coef != 0:
        return False
    with open_dict(config):
        actor.use_kl_loss = False
    return True


def uses_reference_policy(config: DictConfig) -> bool:
    return bool(config.algorithm.use_kl_in_reward or config.actor_rollout_ref.actor.use_kl_loss)


def check_supported(config: DictConfig) -> None:
    if config.actor_rollout_ref.actor.strategy not in ("fsdp", "fsdp2"):
        strategy = config.actor_rollout_ref.actor.strategy
        raise ValueError(f"GRACE runs on verl's FSDP workers; actor.strategy={strategy!r}"
                         " is not supported")
    if config.actor_rollout_ref.rollout.mode != "sync":
        raise ValueError("GRACE needs rollout.mode=sync: the async rollout has no generate_sequences in verl 0.4.1")
    if config.reward_model.reward_manager == "hidden" and config.reward_model.launch_reward_fn_async:
        raise ValueError("reward_model.launch_reward_fn_async=True runs the reward in a separate task without the "
                         "worker group; the hidden reward needs it (the reference silently trained on zeros)")


@ray.remote(num_cpus=1)
class GraceTaskRunner:
    def run(self, config: DictConfig) -> None:
        from verl.single_controller.ray import RayWorkerGroup
        from verl.trainer.main_ppo import create_rl_sampler
        from verl.trainer.ppo.ray_trainer import ResourcePoolManager, Role
        from verl.trainer.ppo.reward import load_reward_manager
        from verl.utils import hf_processor, hf_tokenizer
        from verl.utils.dataset.rl_dataset import collate_fn
        from verl.utils.fs import copy_to_local
        from verl.utils.model import get_generation_config
        from verl.workers.fsdp_workers import ActorRolloutRefWorker

        import grace.verl_ext.reward_manager  # noqa: F401  registers "hidden" in this process
        from grace.prompts import generation_eos_ids
        from grace.verl_ext import cpu_compat, metrics_file
        from grace.verl_ext.dataset import GraceRLDataset
        from grace.verl_ext.trainer import GraceRayPPOTrainer
        from grace.verl_ext.worker import GraceActorRolloutRefWorker

        cpu_compat.apply()
        metrics_file.install()
        print(f"GraceTaskRunner on {socket.gethostname()}, pid {os.getpid()}")
        OmegaConf.resolve(config)
        check_supported(config)
        if drop_unused_reference_policy(config):
            print("kl_loss_coef is 0 and no KL in the reward: no reference policy is built or run")

        local_path = copy_to_local(config.actor_rollout_ref.model.path,
                                   use_shm=config.actor_rollout_ref.model.get("use_shm", False))
        trust_remote_code = config.data.get("trust_remote_code", False)
        tokenizer = hf_tokenizer(local_path, trust_remote_code=trust_remote_code)
        processor = hf_processor(local_path, trust_remote_code=trust_remote_code, use_fast=True)

        pool = "global_pool"
        role_worker_mapping = {Role.ActorRollout: ray.remote(GraceActorRolloutRefWorker)}
        mapping = {Role.ActorRollout: pool}
        if uses_reference_policy(config):
            role_worker_mapping[Role.RefPolicy] = ray.remote(ActorRolloutRefWorker)
            mapping[Role.RefPolicy] = pool
        resource_pool_manager = ResourcePoolManager(
            resource_pool_spec={pool: [config.trainer.n_gpus_per_node] * config.trainer.nnodes}, mapping=mapping)

        reward_kwargs = dict(config.reward_model.get("reward_kwargs", {}))
        if config.reward_model.reward_manager == "hidden":
            reward_kwargs.setdefault("eos_token_ids", generation_eos_ids(get_generation_config(local_path), tokenizer))
        reward_fn = load_reward_manager(config, tokenizer, num_examine=0, **reward_kwargs)
        val_kwargs = {**reward_kwargs, "rationale_temperature": 0.0, "share_log_prob_forward": False} \
            if config.reward_model.reward_manager == "hidden" else reward_kwargs
        val_reward_fn = load_reward_manager(config, tokenizer, num_examine=1, **val_kwargs)

        system_prompt = reward_kwargs.get("custom_prompt")  # the prompts carry the system prompt the reward leaves out
        train_dataset = GraceRLDataset(config.data.train_files, tokenizer, config.data, processor, system_prompt)
        val_dataset = GraceRLDataset(config.data.val_files, tokenizer, config.data, processor, system_prompt)
        trainer = GraceRayPPOTrainer(
            config=config, tokenizer=tokenizer, processor=processor, role_worker_mapping=role_worker_mapping,
            resource_pool_manager=resource_pool_manager, ray_worker_group_cls=RayWorkerGroup,
            reward_fn=reward_fn, val_reward_fn=val_reward_fn, train_dataset=train_dataset, val_dataset=val_dataset,
            collate_fn=collate_fn, train_sampler=create_rl_sampler(config.data, train_dataset),
            device_name=config.trainer.device,
        )
        trainer.init_workers()
        trainer.fit()
