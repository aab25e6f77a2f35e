"""Every post-training stage by name (``lake train STAGE``): the one driver and the one worker look them up here."""

from __future__ import annotations

from training.dpo import dpo_stage
from training.posttrain import REWARD, SFT, Stage
from training.rl import rl_stages

STAGES: dict[str, Stage] = {"sft": SFT, "reward": REWARD, "dpo": dpo_stage(), **rl_stages()}
