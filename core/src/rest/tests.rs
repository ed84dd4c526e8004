//! The REST core over real sockets: trust decisions over mTLS, the envelope, bad requests, the
//! control socket's single-instance rule and shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tls;
use crate::certs::{self, CertKeyPair};
use crate::member_config::MemberConfig;
use crate::trust::{Remote, Truststore};
use crate::{App, Args, Client, DaemonArgs, ErrorKind};

use crate::test_support::{Member, free_address};

/// A state directory that looks initialised (daemon.yaml, a Raft identity, a cluster
/// certificate), with `peer` in its truststore.
fn initialised_dir(address: &str, peer: &CertKeyPair) -> (tempfile::TempDir, CertKeyPair) {
    let dir = tempfile::tempdir().unwrap();
    let state = crate::state_dir::StateDir::open(dir.path()).unwrap();
    MemberConfig {
        name: "c1".into(),
        address: address.into(),
        ..Default::default()
    }
    .save(&state.daemon_yaml())
    .unwrap();
    std::fs::write(state.raft_identity(), "id: 1\n").unwrap();
    let cluster = certs::generate("c1").unwrap();
    certs::write_pair(&state.cluster_cert(), &state.cluster_key(), &cluster).unwrap();
    Truststore::open(state.truststore_dir())
        .unwrap()
        .add(Remote {
            name: "peer".into(),
            address: "127.0.0.1:1".into(),
            certificate: peer.cert_pem.clone(),
        })
        .unwrap();
    (dir, cluster)
}

/// Sends one raw HTTP/1.1 request over `stream` and returns the status and the JSON body.
async fn raw_request<S>(
    stream: S,
    host: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Value)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn tls_stream(
    address: &str,
    pinned_pem: &str,
    identity: Option<&CertKeyPair>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = tls::client_config(pinned_pem, identity).unwrap();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

fn error_envelope(status: u16, message: &str) -> Value {
    json!({"type":"error","status":"","status_code":0,"operation":"","error_code":status,"error":message,"metadata":null})
}

#[tokio::test]
async fn network_trust_decisions() {
    let address = free_address();
    let peer = certs::generate("peer").unwrap();
    let stranger = certs::generate("stranger").unwrap();
    let (dir, cluster) = initialised_dir(&address, &peer);
    let member = Member::start(dir).await;

    let trusted = Client::remote(&address, &cluster.cert_pem, Some(&peer)).unwrap();
    let untrusted = Client::remote(&address, &cluster.cert_pem, Some(&stranger)).unwrap();
    let anonymous = Client::remote(&address, &cluster.cert_pem, None).unwrap();

    let server: Value = trusted.query(Method::GET, "/core/1.0", None).await.unwrap();
    assert_eq!(server["name"], "c1");
    assert_eq!(server["address"], address.as_str());
    // Its database never opens (it has no real cluster behind it), so it is not ready.
    assert_eq!(server["ready"], false);
    let ready: Value = trusted
        .query(Method::GET, "/core/1.0/ready", None)
        .await
        .unwrap();
    assert_eq!(ready, json!({}));

    for client in [&untrusted, &anonymous] {
        let server: Value = client.query(Method::GET, "/core/1.0", None).await.unwrap();
        assert_eq!(server["version"], "1.0");
        let err = client
            .query::<Value>(Method::GET, "/core/1.0/ready", None)
            .await
            .unwrap_err();
        assert_eq!((err.http_status(), err.message()), (403, "not authorized"));
    }

    // A trusted certificate with a wrong Host header is untrusted, not an error.
    let stream = tls_stream(&address, &cluster.cert_pem, Some(&peer)).await;
    let (status, body) = raw_request(stream, "127.0.0.1:1", "GET", "/core/1.0/ready", vec![]).await;
    assert_eq!((status, body), (403, error_envelope(403, "not authorized")));
    let stream = tls_stream(&address, &cluster.cert_pem, Some(&peer)).await;
    let (status, _) = raw_request(stream, &address, "GET", "/core/1.0/ready", vec![]).await;
    assert_eq!(status, 200);

    // The control endpoints are not served on the network, even to trusted callers.
    let err = trusted
        .query::<Value>(Method::POST, "/core/control/shutdown", None)
        .await
        .unwrap_err();
    assert_eq!((err.http_status(), err.message()), (404, "not found"));

    // A client pinning another certificate refuses the server.
    let wrong_pin = Client::remote(&address, &stranger.cert_pem, Some(&peer)).unwrap();
    let err = wrong_pin
        .query::<Value>(Method::GET, "/core/1.0", None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // Removing the peer from the truststore (as another process would) revokes its trust.
    std::fs::remove_file(member.app.state_dir().truststore_dir().join("peer.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = trusted
            .query::<Value>(Method::GET, "/core/1.0/ready", None)
            .await;
        if result.as_ref().is_err_and(|err| err.http_status() == 403) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "truststore change not picked up: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    member.stop().await;
}

#[tokio::test]
async fn bad_requests_get_error_envelopes_and_leave_the_daemon_serving() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.socket");
    let member = Member::start(dir).await;
    let unix = || async { tokio::net::UnixStream::connect(&socket).await.unwrap() };

    let (status, body) = raw_request(unix().await, "unix.socket", "GET", "/", vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(body["metadata"], json!(["/1.0"]));
    assert_eq!(body["type"], "sync");
    assert_eq!(body["status"], "Success");
    assert_eq!(body["status_code"], 200);

    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("GET", "/core/1.0/nothing", vec![], 404, "not found"),
        ("GET", "/1.0", vec![], 404, "not found"),
        ("BREW", "/core/1.0", vec![], 404, "Method 'BREW' not found"),
        ("POST", "/core/1.0", vec![], 501, "not implemented"),
        ("DELETE", "/core/1.0/ready", vec![], 501, "not implemented"),
    ];
    for (method, path, body, status, message) in cases {
        let (got_status, got_body) =
            raw_request(unix().await, "unix.socket", method, path, body).await;
        assert_eq!(
            (got_status, got_body),
            (status, error_envelope(status, message)),
            "{method} {path}"
        );
    }

    let (status, body) = raw_request(
        unix().await,
        "unix.socket",
        "POST",
        "/core/control/shutdown",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON in request body"),
        "{body}"
    );

    // An oversized body is refused from its declared length, before it is sent.
    let mut stream = unix().await;
    let head = format!(
        "POST /core/control/shutdown HTTP/1.1\r\nHost: unix.socket\r\nContent-Length: {}\r\n\r\n",
        super::server::MAX_BODY_BYTES + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains(r#""error_code":413"#), "{answer}");

    // A streamed (chunked) body is cut off at the limit too.
    let mut stream = unix().await;
    stream
        .write_all(b"POST /core/control/shutdown HTTP/1.1\r\nHost: unix.socket\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("100000\r\n{}\r\n", " ".repeat(0x100000));
    for _ in 0..=(super::server::MAX_BODY_BYTES / 0x100000) {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server stopped reading: it has answered
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");

    // None of that disturbed the daemon.
    let status = member.app.status().await.unwrap();
    assert!(
        !status.ready,
        "an un-initialised member is not ready (SPEC §2.3)"
    );
    assert_eq!(status.address, "");
    assert_eq!(status.name, certs::hostname());
    member.stop().await;
}

#[tokio::test]
async fn control_socket_is_single_instance_and_removed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let socket = root.join("control.socket");
    // A stale socket file (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let member = Member::start(dir).await;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );

    let second = App::new(Args {
        state_dir: Some(root.clone()),
        ..Default::default()
    })
    .unwrap();
    let err = second
        .start(DaemonArgs {
            version: "1.0".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        format!("Unix socket at {socket:?} is already running")
    );
    let first = member.app.status().await;
    assert!(first.is_ok(), "the first daemon keeps serving: {first:?}");

    let client = Client::unix(&socket);
    let answer: Value = client
        .query(Method::POST, "/core/control/shutdown", None)
        .await
        .unwrap();
    assert_eq!(answer, json!({}));
    member.task.await.unwrap().unwrap();
    assert!(!socket.exists());
    let err = client
        .query::<Value>(Method::GET, "/core/1.0", None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn start_requires_a_version_and_valid_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(Args {
        state_dir: Some(dir.path().into()),
        ..Default::default()
    })
    .unwrap();
    let err = app.start(DaemonArgs::default()).await.unwrap_err();
    assert_eq!(
        err.message(),
        "Version was missing at MicroCluster daemon start"
    );
    let err = app
        .start(DaemonArgs {
            version: "1".into(),
            api_extensions: vec!["Bad".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .starts_with("External extension name \"Bad\" is invalid")
    );
    assert!(!dir.path().join("control.socket").exists());
}
