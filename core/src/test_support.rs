//! Helpers shared by the project's tests: core's unit tests and, through the `test-support`
//! feature, the acceptance tests and the C ABI's tests. Not part of the library's API.

use crate::sync;

/// A free TCP address on 127.0.0.1 (the port is released before it is returned), never one
/// this test process was given before: the kernel may hand a just-released port out again,
/// and two members of one test must not share an address.
pub fn free_address() -> String {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = sync::lock(&GIVEN);
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if !given.contains(&port) {
            given.push(port);
            return format!("127.0.0.1:{port}");
        }
    }
}
