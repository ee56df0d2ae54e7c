"""DeepSpeed config built from our Config (ZeRO stage, precision, clipping)."""
from __future__ import annotations


def deepspeed_config(cfg, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,   # one packed micro-batch per step; its size is in tokens
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.optim.grad_clip,
        # reduce_scatter pinned on: that path averages gradients over every rank, which the loss
        # scaling in sora.train.trainer.flow_matching_loss relies on (with sequence parallelism too).
        "zero_optimization": {"stage": cfg.train.zero_stage, "stage3_param_persistence_threshold": 0,
                              "overlap_comm": False, "contiguous_gradients": True, "reduce_scatter": True},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: DeepSpeed's fused Adam needs CUDA
        "bf16": {"enabled": bf16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
