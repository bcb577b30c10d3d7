"""anygpt: any-to-any multimodal language models built from discrete tokens.

``anygpt.load(model)`` gives the inference engine (see :mod:`anygpt.api`).
"""

__version__ = "0.1.0"


def load(*args, **kwargs):
    """Load a model bundle for inference; see :func:`anygpt.api.load`."""
    from anygpt.api import load as _load

    return _load(*args, **kwargs)
