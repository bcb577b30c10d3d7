"""Training AnyGPT-style models: token datasets, vocabulary extension, stage 1 and stage 2.

Modules (heavy libraries are imported inside functions):

* :mod:`~anygpt.train.tokenize_media`: ``anygpt tokenize``, media manifests -> token jsonl.
* :mod:`~anygpt.train.vocab`: ``anygpt extend-vocab``, AnyGPT's tokens added to a LLaMA model.
* :mod:`~anygpt.train.pretrain_data` / :mod:`~anygpt.train.sft_data`: examples of each stage.
* :mod:`~anygpt.train.tokens`: tokenization with exact loss spans.
* :mod:`~anygpt.train.data`: validation split, mixture, packing, cached datasets.
* :mod:`~anygpt.train.packing`: packers and the collator (no attention across examples).
* :mod:`~anygpt.train.engine`: the Hugging Face ``Trainer`` run and the final bundle.
* :mod:`~anygpt.train.config`: typed configs (defaults < config file < flags).
"""
