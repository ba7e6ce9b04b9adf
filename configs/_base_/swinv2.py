# SwinV2 settings shared by the detection and segmentation configs (variables, used as
# {{_base_.name}}).

# Weight decay as SwinV2 was trained (official `set_weight_decay`): none on 1-D parameters
# (norm weights, biases, q/v biases) nor on the position-bias MLP and the attention logit
# scales. mmengine matches custom_keys as substrings of parameter names.
swinv2_paramwise_cfg = dict(
    flat_decay_mult=0.,
    custom_keys={
        'cpb_mlp': dict(decay_mult=0.),
        'logit_scale': dict(decay_mult=0.),
    })
