//! Process services, at the bottom of the crate: allocator settings
//! ([`alloc`]), compute devices and dtypes by name ([`device`]), memory limits
//! and out-of-memory errors ([`memory`]), the interrupt flag ([`interrupt`])
//! and progress output ([`progress`]). They depend on nothing else in the
//! crate.

pub mod alloc;
pub mod device;
pub mod interrupt;
pub mod memory;
pub mod progress;
