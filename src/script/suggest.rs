//! "Did you mean …?" for the script front end: the helper lives in
//! [`crate::options::suggest`], below the compression rules that use it too.

pub use crate::options::suggest::{distance, nearest};
