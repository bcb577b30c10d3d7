"""anygpt: any-to-any multimodal language models built from discrete tokens."""

__version__ = "0.1.0"
