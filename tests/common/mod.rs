//! The shared harness lives in the library (`latch::testing`, feature
//! `test-util`), so benches use it too.
#![allow(unused_imports)]

pub use latch::testing::*;
