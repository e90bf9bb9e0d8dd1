"""Speed cases for the asv suite (``benchmarks/bench_speed.py``) and scripts: a stable import path.

asv runs today's ``benchmarks/`` against older commits, so this module stays at ``harness.speed``; the code
lives in :mod:`harness.execution.speed_cases`.
"""

from __future__ import annotations

from .execution.speed_cases import (SPEED_TASK, SpeedCase, attention_core_call, build_speed_case, forward_call,
                                    random_qkv, speed_case, unavailable)

__all__ = ["SPEED_TASK", "SpeedCase", "attention_core_call", "build_speed_case", "forward_call", "random_qkv",
           "speed_case", "unavailable"]
