"""wakefield's built-in simulators, each registered in the
``wakefield.simulators`` entry-point group."""
