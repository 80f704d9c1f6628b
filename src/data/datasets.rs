//! Dataset names, splits and where their text is found (helper-owned; stub).
