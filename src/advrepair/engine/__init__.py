"""The projected-gradient engine shared by attacks, reverse attacks and transformations."""
from advrepair.engine.loop import LoopTrace, LossFn, projected_gradient
from advrepair.engine.projection import (project, random_direction, random_start, random_start_numbers,
                                         seeded_random_start)
from advrepair.engine.fused_conv_pool import fused_conv_pool_available
from advrepair.engine.thin_convolutions import (fast_input_gradients, is_thin_convolution,
                                                 tap_input_gradients_enabled)
from advrepair.engine.steps import (L2Step, MomentumSignStep, SignStep, StepRule, default_step_rule,
                                    relative_tanh_surrogate, soft_sign_surrogate, tanh_surrogate)

__all__ = [
    "fast_input_gradients", "is_thin_convolution", "tap_input_gradients_enabled", "fused_conv_pool_available",
    "LoopTrace", "LossFn", "projected_gradient", "project", "random_start",
    "random_start_numbers", "random_direction", "seeded_random_start", "L2Step", "MomentumSignStep", "SignStep", "StepRule",
    "default_step_rule", "relative_tanh_surrogate", "soft_sign_surrogate", "tanh_surrogate",
]
