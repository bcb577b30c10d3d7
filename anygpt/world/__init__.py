"""The nano world: a small synthetic world of pictures, speech and music that the project generates.

Its vocabulary is fixed (:mod:`anygpt.world.vocab`), so anyone can draw or say things in it
independently of the generator, and every attribute of every item is known, which makes a model
trained on it measurable.
"""
