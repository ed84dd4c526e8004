//! Rust side of the C ABI. The exported `mc_*` functions arrive with issue 6 (C ABI).
