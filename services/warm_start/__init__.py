"""The ``warm-start`` service kind: settings for target outputs.

- :mod:`.inverse`: the inverse model (outputs to settings), trained on a scan
  with random outputs hidden, so it answers any subset of its targets;
- :mod:`.optimize`: the safe objective and the scipy search around it;
- :mod:`.service`: the service kind that wires them to the bus.
"""
