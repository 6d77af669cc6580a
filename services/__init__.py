"""wakefield's built-in service kinds, each registered in the
``wakefield.services`` entry-point group."""
