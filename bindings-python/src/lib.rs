//! Python binding (pyo3). The module arrives with issue 7; until then this crate only links the core.
