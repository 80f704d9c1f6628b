//! Compute devices and dtypes by name.
