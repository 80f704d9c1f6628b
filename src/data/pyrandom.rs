//! Python's `random` module, bit for bit (helper-owned; stub).
