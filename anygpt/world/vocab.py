"""The fixed vocabulary of the nano world: every word a caption, question or request may use."""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES = ("small", "big")
# Relation of the first object to the second, as captions say it: "a X to the left of a Y".
RELATIONS = ("to the left of", "to the right of", "above", "below")

TEMPOS = ("slow", "fast")
MOODS = ("happy", "sad")  # happy = major key, sad = minor key
INSTRUMENTS = ("piano", "organ", "flute")
REGISTERS = ("high", "low")

IMAGE_SIZE = 64  # pixels per side of every world picture
SPEECH_RATE = 16000  # Hz, mono
MUSIC_RATE = 16000  # Hz, mono
MUSIC_SECONDS = 3.0

SPLITS = ("train", "heldout")
