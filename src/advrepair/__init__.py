"""advrepair: test-time adversarial defenses and their honest evaluation, in PyTorch.

Images are float NCHW in [0, 1]; models return logits with normalization inside; attacks
look like torchattacks; a defense is an nn.Module mapping images to images.
"""
__version__ = "0.1.0"

from typing import Any

from advrepair.allocator import retain_freed_memory

retain_freed_memory()


def __getattr__(name: str) -> Any:
    # imported on first use, so that `import advrepair` stays light
    if name in ("audit", "AuditReport"):
        from advrepair import auditing

        return getattr(auditing, name)
    raise AttributeError(f"module 'advrepair' has no attribute {name!r}")


__all__ = ["AuditReport", "audit", "__version__"]
