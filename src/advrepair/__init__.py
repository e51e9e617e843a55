"""advrepair: test-time adversarial defenses and their honest evaluation, in PyTorch.

Images are float NCHW in [0, 1]; models return logits with normalization inside; attacks
look like torchattacks; a defense is an nn.Module mapping images to images.
"""
__version__ = "0.1.0"
