"""Pure admission decisions: data in, a decision or a new object out. No I/O, no clock."""
