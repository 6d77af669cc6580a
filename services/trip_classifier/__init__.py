"""Classifying SRF cavity trips from their waveforms.

The library behind the ``trip-classifier`` service kind: reading the trip
events a C100 waveform recorder writes (:mod:`.reader`), interpretable
features (:mod:`.features`), a convolutional network and a tree ensemble
(:mod:`.models`), their training with seeded stratified splits
(:mod:`.training`), metrics and the promotion gate (:mod:`.metrics`) and
plots (:mod:`.plots`).
"""
