//! Extension servers (SPEC §13): the example's `/1.0/extended` across real `microd`
//! processes (SPEC §18 scenario 10), and the rules of §13.2–13.3 on in-process members.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use microcluster::extensions::{
    EndpointRequest, ExtensionAction, ExtensionEndpoint, ExtensionResource, ExtensionServer, Reply,
};
use microcluster::{App, Args, DaemonArgs, runtime};
use microcluster_it::{Cluster, free_address, texts, wait_until};
use serde_json::{Value, json};

const HEARTBEAT: &[&str] = &["--heartbeat", "1s"];

fn greeting(to: &str, from: &str) -> String {
    format!(
        "cluster member at address \"{to}\" received message \"Testing 1 2 3...\" from cluster member at address \"{from}\""
    )
}

#[test]
fn extended_endpoints() {
    let cluster = Cluster::start(4, HEARTBEAT);
    let a = &cluster.addresses;

    // 10.1: c1 greets c2, c3, c4, in name order.
    let out = cluster.ctl_ok(0, &["extended", "simple"]);
    let expected: Vec<String> = (1..4).map(|k| greeting(&a[k], &a[0])).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    // `simple` is the default kind.
    assert_eq!(cluster.ctl_ok(0, &["extended"]), out);

    // 10.2: with --target cK, cK sends the greetings.
    for k in 0..4 {
        let target = format!("c{}", k + 1);
        let out = cluster.ctl_ok(0, &["extended", "simple", "--target", &target]);
        let expected: Vec<String> = (0..4)
            .filter(|&j| j != k)
            .map(|j| greeting(&a[j], &a[k]))
            .collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), expected, "target {target}");
    }

    // Over mTLS to another member's address.
    let out = cluster.ctl_ok(0, &["extended", "simple", &a[1]]);
    let expected: Vec<String> = [0, 2, 3].iter().map(|&j| greeting(&a[j], &a[1])).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);

    // 10.3: WebSockets, served locally and relayed to the target.
    let messages = |name: &str| -> Vec<String> {
        (1..=3)
            .map(|i| format!("{name}: websocket message {i}"))
            .collect()
    };
    let out = cluster.ctl_ok(0, &["extended", "websocket"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), messages("c1"));
    for k in 1..=4 {
        let target = format!("c{k}");
        let out = cluster.ctl_ok(0, &["extended", "websocket", "--target", &target]);
        assert_eq!(out.lines().collect::<Vec<_>>(), messages(&target));
    }
    let out = cluster.ctl_ok(0, &["extended", "websocket", &a[2]]);
    assert_eq!(out.lines().collect::<Vec<_>>(), messages("c3"));
    // A plain request to the WebSocket endpoint is refused.
    let err = request(&cluster, 0, "GET", "/1.0/extended/websocket", None).unwrap_err();
    assert_eq!(
        (err.http_status(), err.message()),
        (400, "Expected a WebSocket upgrade request")
    );
    let out = cluster.ctl(0, &["extended", "websocket", "--target", "nonexist"]);
    assert!(
        texts(&out)
            .1
            .contains("Failed to get cluster member for request target name \"nonexist\""),
        "{:?}",
        texts(&out)
    );

    // 10.4: an unknown target.
    let out = cluster.ctl(0, &["extended", "simple", "--target", "nonexist"]);
    assert!(!out.status.success());
    assert!(
        texts(&out)
            .1
            .contains("Failed to get cluster member for request target name \"nonexist\""),
        "{:?}",
        texts(&out)
    );
}

/// `method path` with `body` on member `i`'s control socket.
fn request(
    cluster: &Cluster,
    i: usize,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> microcluster::Result<Value> {
    let client = microcluster::Client::unix(cluster.state_dirs[i].join("control.socket"));
    let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
    let path = path.to_string();
    microcluster::runtime::block_on(async move { client.query(method, &path, body.as_ref()).await })
}

fn daemon_yaml(cluster: &Cluster, i: usize) -> String {
    std::fs::read_to_string(cluster.state_dirs[i].join("daemon.yaml")).unwrap()
}

#[test]
fn daemon_config_api() {
    let cluster = Cluster::start(2, HEARTBEAT);
    let config = "/core/1.0/daemon/config";
    let (name, address) = ("c1", cluster.addresses[0].clone());

    // 9.1
    let got = request(&cluster, 0, "GET", config, None).unwrap();
    assert_eq!(got["name"], name);
    assert_eq!(got["address"], address.as_str());
    assert_eq!(got["failure-domain"], 0);

    // 9.2
    let body = json!({"name": name, "address": address, "failure-domain": 9});
    request(&cluster, 0, "PUT", config, Some(body)).unwrap();
    let got = request(&cluster, 0, "GET", config, None).unwrap();
    assert_eq!(got["failure-domain"], 9);
    assert_eq!(got["servers"], json!({}));
    assert!(daemon_yaml(&cluster, 0).contains("failure-domain: 9\n"));

    // 9.3
    let body = json!({"name": name, "address": address});
    request(&cluster, 0, "PUT", config, Some(body.clone())).unwrap();
    assert_eq!(
        request(&cluster, 0, "GET", config, None).unwrap()["failure-domain"],
        0
    );

    // 9.4
    let five = json!({"name": name, "address": address, "failure-domain": 5});
    request(&cluster, 0, "PUT", config, Some(five)).unwrap();
    request(&cluster, 0, "PATCH", config, Some(body)).unwrap();
    assert_eq!(
        request(&cluster, 0, "GET", config, None).unwrap()["failure-domain"],
        5
    );

    // 9.5
    request(
        &cluster,
        0,
        "PATCH",
        config,
        Some(json!({"failure-domain": 7})),
    )
    .unwrap();
    assert_eq!(
        request(&cluster, 0, "GET", config, None).unwrap()["failure-domain"],
        7
    );
    assert!(daemon_yaml(&cluster, 0).contains("failure-domain: 7\n"));

    // 9.6
    let renamed = json!({"name": "renamed", "address": "127.0.0.1:9999", "failure-domain": 7});
    request(&cluster, 0, "PATCH", config, Some(renamed)).unwrap();
    let got = request(&cluster, 0, "GET", config, None).unwrap();
    assert_eq!(
        (got["name"].clone(), got["address"].clone()),
        (json!(name), json!(address))
    );

    // 9.7: each refusal is a 400 and changes nothing.
    let refusals = [
        (
            json!({"name": "other", "address": address}),
            "Name is immutable",
        ),
        (
            json!({"name": name, "address": "127.0.0.1:1"}),
            "Address is immutable",
        ),
        (
            json!({"name": name, "address": address,
                   "servers": {"unknown.example.com": {"address": "127.0.0.1:9443"}}}),
            "No matching additional listener found for \"unknown.example.com\"",
        ),
    ];
    for (body, message) in refusals {
        let err = request(&cluster, 0, "PUT", config, Some(body)).unwrap_err();
        assert_eq!((err.http_status(), err.message()), (400, message));
    }
    let err = request(
        &cluster,
        0,
        "PUT",
        config,
        Some(json!({"failure-domain": "x"})),
    )
    .unwrap_err();
    assert_eq!(err.http_status(), 400);
    assert_eq!(
        request(&cluster, 0, "GET", config, None).unwrap()["failure-domain"],
        7
    );

    // 9.8
    assert_eq!(
        request(&cluster, 0, "GET", "/core/1.0/daemon/servers", None).unwrap(),
        json!({})
    );

    // 9.9: with restart, the value is in the Raft membership when the answer comes.
    let restart = format!("{config}?restart=true");
    request(
        &cluster,
        0,
        "PATCH",
        &restart,
        Some(json!({"failure-domain": 42})),
    )
    .unwrap();
    cluster.ctl_ok(0, &["cluster", "list"]);
    assert_eq!(
        request(&cluster, 0, "GET", config, None).unwrap()["failure-domain"],
        42
    );

    // 9.10
    let body = json!({"name": name, "address": address, "failure-domain": 99});
    request(&cluster, 0, "PUT", &restart, Some(body)).unwrap();
    request(
        &cluster,
        0,
        "PATCH",
        config,
        Some(json!({"failure-domain": 7})),
    )
    .unwrap();
    assert_eq!(
        request(&cluster, 0, "GET", config, None).unwrap()["failure-domain"],
        7
    );

    // OnDaemonConfigUpdate ran on c2 for each change.
    let updates = cluster
        .log(1)
        .matches("OnDaemonConfigUpdate hook: c2")
        .count();
    assert!(updates >= 9, "{updates} updates:\n{}", cluster.log(1));
}

#[test]
fn cluster_certificate_rotation_keeps_the_cluster_working() {
    let cluster = Cluster::start(3, HEARTBEAT);
    cluster
        .sql(
            0,
            "INSERT INTO extended_table (key, value) VALUES ('before', '1')",
        )
        .unwrap();
    let new = microcluster::certs::generate("c1").unwrap();
    let path = "/core/1.0/cluster/certificates/cluster";

    // Bad input changes nothing.
    let old_cert = std::fs::read_to_string(cluster.state_dirs[0].join("cluster.crt")).unwrap();
    let other = microcluster::certs::generate("x").unwrap();
    let mismatched = json!({"cert": new.cert_pem, "key": other.key_pem, "ca": ""});
    let err = request(&cluster, 0, "PUT", path, Some(mismatched)).unwrap_err();
    assert_eq!(err.message(), "Certificate does not match its private key");
    let garbage = json!({"cert": "garbage", "key": new.key_pem});
    let err = request(&cluster, 0, "PUT", path, Some(garbage)).unwrap_err();
    assert_eq!(
        err.message(),
        "Certificate must be base64 encoded PEM certificate"
    );
    let err = request(
        &cluster,
        0,
        "PUT",
        "/core/1.0/cluster/certificates/server",
        Some(json!({"cert": new.cert_pem, "key": new.key_pem})),
    )
    .unwrap_err();
    assert_eq!(
        err.message(),
        "Cannot replace server certificate after initialization"
    );
    let err = request(
        &cluster,
        0,
        "PUT",
        "/core/1.0/cluster/certificates/nope.example.com",
        Some(json!({"cert": new.cert_pem, "key": new.key_pem})),
    )
    .unwrap_err();
    assert_eq!(
        err.message(),
        "No matching additional server found for \"nope.example.com\""
    );
    for dir in &cluster.state_dirs {
        assert_eq!(
            std::fs::read_to_string(dir.join("cluster.crt")).unwrap(),
            old_cert
        );
    }

    // The rotation reaches every member.
    let body = json!({"cert": new.cert_pem, "key": new.key_pem, "ca": ""});
    request(&cluster, 0, "PUT", path, Some(body)).unwrap();
    for dir in &cluster.state_dirs {
        assert_eq!(
            std::fs::read_to_string(dir.join("cluster.crt")).unwrap(),
            new.cert_pem
        );
    }

    // Every member stays trusted and the database writable from each of them, over new
    // connections that pin the new certificate.
    wait_until("every member ONLINE after the rotation", || {
        (0..3).all(|i| {
            cluster
                .members_status(i)
                .iter()
                .all(|(_, _, status)| status == "ONLINE")
        })
    });
    for i in 0..3 {
        cluster
            .sql(
                i,
                &format!("INSERT INTO extended_table (key, value) VALUES ('after{i}', '1')"),
            )
            .unwrap();
    }
    let rows = cluster.select(2, "SELECT key FROM extended_table ORDER BY key");
    assert_eq!(rows.len(), 4, "{rows:?}");
    // A client pinning the new certificate reaches another member's listener.
    cluster.ctl_ok(0, &["cluster", "list", &cluster.addresses[1]]);
    // The greeting fans out over fresh member-to-member connections.
    assert_eq!(cluster.ctl_ok(1, &["extended"]).lines().count(), 2);
}

/// The servers of the in-process test: a core-API server (also on the control socket) with an
/// open, a guarded and a pre-init endpoint, a dedicated listener with its own certificate, and
/// one presenting the cluster certificate.
/// Replaces the certificate `name` through `client` with a new one, which it returns.
async fn rotate_certificate(
    client: &microcluster::Client,
    name: &str,
) -> microcluster::Result<microcluster::certs::CertKeyPair> {
    let rotated = microcluster::certs::generate(name)?;
    let body = json!({"cert": rotated.cert_pem, "key": rotated.key_pem});
    let path = format!("/core/1.0/cluster/certificates/{name}");
    client
        .query::<Value>(Method::PUT, &path, Some(&body))
        .await?;
    Ok(rotated)
}

fn in_process_servers(metrics_address: &str, status_address: &str) -> Vec<ExtensionServer> {
    let answer = |text: &'static str| {
        ExtensionAction::new(
            move |state: microcluster::State, request: EndpointRequest| async move {
                Ok(Reply::Json(json!({
                    "text": text,
                    "member": state.name(),
                    "trusted": request.trusted,
                    "caller": request.to_json()["caller"],
                })))
            },
        )
    };
    let guarded = answer("guarded").access_handler(|_, request: EndpointRequest| async move {
        match request
            .query
            .iter()
            .any(|(k, v)| k == "key" && v == "secret")
        {
            true => Ok(true),
            false => Ok(false),
        }
    });
    let failing = ExtensionAction::new(|_, _| async {
        Err(microcluster::Error::not_found("no such widget"))
    });
    let core = ExtensionServer {
        name: "ext.example.com".into(),
        core_api: true,
        serve_unix: true,
        pre_init: true,
        resources: vec![ExtensionResource {
            path_prefix: "1.0".into(),
            endpoints: vec![
                ExtensionEndpoint::new("open", "open").get(answer("open").allow_untrusted()),
                ExtensionEndpoint::new("guarded", "guarded").get(guarded),
                ExtensionEndpoint::new("trusted", "trusted").get(answer("trusted")),
                ExtensionEndpoint::new("failing", "widgets/{id}").get(failing),
                ExtensionEndpoint {
                    allowed_before_init: true,
                    ..ExtensionEndpoint::new("pre", "pre").get(answer("pre"))
                },
            ],
        }],
        ..ExtensionServer::default()
    };
    let dedicated = ExtensionServer {
        name: "metrics.example.com".into(),
        address: metrics_address.into(),
        dedicated_certificate: true,
        resources: vec![ExtensionResource {
            path_prefix: "metrics".into(),
            endpoints: vec![ExtensionEndpoint::new("all", "").get(answer("metrics"))],
        }],
        ..ExtensionServer::default()
    };
    let shared = ExtensionServer {
        name: "status.example.com".into(),
        address: status_address.into(),
        resources: vec![ExtensionResource {
            path_prefix: "status".into(),
            endpoints: vec![ExtensionEndpoint::new("status", "").get(answer("status"))],
        }],
        ..ExtensionServer::default()
    };
    vec![core, dedicated, shared]
}

#[test]
fn extension_servers_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let app = Arc::new(
        App::new(Args {
            state_dir: Some(dir.path().join("m1")),
            ..Args::default()
        })
        .unwrap(),
    );
    let (address, metrics_address, status_address) =
        (free_address(), free_address(), free_address());
    let spawned = app.spawn(DaemonArgs {
        version: "1.0".into(),
        extension_servers: in_process_servers(&metrics_address, &status_address),
        ..DaemonArgs::default()
    });
    let state_dir = dir.path().join("m1");
    runtime::block_on(async move {
        spawned.ready(Some(Duration::from_secs(60))).await?;
        let local = app.local_client();
        let get = |client: microcluster::Client, path: &'static str| async move {
            client.query::<Value>(Method::GET, path, None).await
        };

        // Before init: only the pre-init endpoint, and only on the control socket.
        assert_eq!(get(local.clone(), "/1.0/pre").await?["text"], "pre");
        let err = get(local.clone(), "/1.0/open").await.unwrap_err();
        assert_eq!(
            (err.http_status(), err.message()),
            (503, "Database is not yet initialized")
        );

        app.new_cluster("m1", &address, Default::default()).await?;
        let cluster_cert = std::fs::read_to_string(state_dir.join("cluster.crt")).unwrap();
        let server = microcluster::certs::load_pair(
            &state_dir.join("server.crt"),
            &state_dir.join("server.key"),
        )?;
        let stranger = microcluster::certs::generate("stranger")?;
        let member = microcluster::Client::remote(&address, &cluster_cert, Some(&server))?;
        let untrusted = microcluster::Client::remote(&address, &cluster_cert, Some(&stranger))?;

        // allow_untrusted lets strangers in; the default does not.
        let open = get(untrusted.clone(), "/1.0/open").await?;
        assert_eq!(
            (open["text"].clone(), open["trusted"].clone()),
            (json!("open"), json!(false))
        );
        assert_eq!(open["caller"]["kind"], "unknown");
        let err = get(untrusted.clone(), "/1.0/trusted").await.unwrap_err();
        assert_eq!((err.http_status(), err.message()), (403, "not authorized"));
        let trusted = get(member.clone(), "/1.0/trusted").await?;
        assert_eq!(trusted["caller"]["kind"], "member");
        assert_eq!(trusted["caller"]["name"], "m1");
        assert_eq!(
            get(local.clone(), "/1.0/trusted").await?["caller"]["kind"],
            "control_socket"
        );

        // The access handler runs after the trust decision.
        let err = get(local.clone(), "/1.0/guarded").await.unwrap_err();
        assert_eq!((err.http_status(), err.message()), (403, "not authorized"));
        assert_eq!(
            get(local.clone(), "/1.0/guarded?key=secret").await?["text"],
            "guarded"
        );

        // A handler's error keeps its status; unknown paths are 404 and methods 501.
        let err = get(local.clone(), "/1.0/widgets/7").await.unwrap_err();
        assert_eq!((err.http_status(), err.message()), (404, "no such widget"));
        let err = local
            .query::<Value>(Method::POST, "/1.0/open", None)
            .await
            .unwrap_err();
        assert_eq!(err.http_status(), 501);

        // The dedicated listener presents its own generated certificate and serves only its
        // server's endpoints; trust follows its own address.
        let metrics_cert =
            std::fs::read_to_string(state_dir.join("certificates/metrics.example.com.crt"))
                .unwrap();
        let metrics = microcluster::Client::remote(&metrics_address, &metrics_cert, Some(&server))?;
        let answer = get(metrics.clone(), "/metrics").await?;
        assert_eq!(
            (answer["text"].clone(), answer["trusted"].clone()),
            (json!("metrics"), json!(true))
        );
        let err = get(metrics.clone(), "/1.0/open").await.unwrap_err();
        assert_eq!(err.http_status(), 404);
        let wrong_pin = microcluster::Client::remote(&metrics_address, &cluster_cert, None)?;
        assert!(get(wrong_pin, "/metrics").await.is_err());

        // Moving the listener through the daemon config: the old address stops answering.
        let moved = free_address();
        local
            .query::<Value>(
                Method::PUT,
                "/core/1.0/daemon/servers",
                Some(&json!({"metrics.example.com": {"address": moved}})),
            )
            .await?;
        let metrics = microcluster::Client::remote(&moved, &metrics_cert, Some(&server))?;
        assert_eq!(get(metrics, "/metrics").await?["text"], "metrics");
        let old = microcluster::Client::remote(&metrics_address, &metrics_cert, Some(&server))?;
        assert!(get(old, "/metrics").await.is_err());
        let err = local
            .query::<Value>(
                Method::PUT,
                "/core/1.0/daemon/servers",
                Some(&json!({"metrics.example.com": {"address": address}})),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.message(),
            format!("Address {address:?} is already in use")
        );

        // Rotating the listener's certificate: new connections get the new one at once.
        let rotated = rotate_certificate(&local, "metrics.example.com").await?;
        let pinned_new = microcluster::Client::remote(&moved, &rotated.cert_pem, Some(&server))?;
        assert_eq!(get(pinned_new, "/metrics").await?["text"], "metrics");
        let pinned_old = microcluster::Client::remote(&moved, &metrics_cert, Some(&server))?;
        assert!(get(pinned_old, "/metrics").await.is_err());
        let on_disk =
            std::fs::read_to_string(state_dir.join("certificates/metrics.example.com.crt"))
                .unwrap();
        assert_eq!(on_disk, rotated.cert_pem);
        // The core listener still presents the cluster certificate.
        assert_eq!(
            get(member.clone(), "/1.0/trusted").await?["text"],
            "trusted"
        );

        // A listener on the cluster certificate moves to its own when one is given.
        let status = microcluster::Client::remote(&status_address, &cluster_cert, Some(&server))?;
        assert_eq!(get(status, "/status").await?["text"], "status");
        let own = rotate_certificate(&local, "status.example.com").await?;
        let status = microcluster::Client::remote(&status_address, &own.cert_pem, Some(&server))?;
        assert_eq!(get(status, "/status").await?["text"], "status");
        let trusted = get(member.clone(), "/1.0/trusted").await?;
        assert_eq!(trusted["text"], "trusted");

        spawned.stop().await
    })
    .unwrap();
}

#[test]
fn invalid_extension_servers_fail_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let app = Arc::new(
        App::new(Args {
            state_dir: Some(dir.path().join("m1")),
            ..Args::default()
        })
        .unwrap(),
    );
    let mut servers = in_process_servers(&free_address(), &free_address());
    servers[1].serve_unix = true;
    let spawned = app.spawn(DaemonArgs {
        version: "1.0".into(),
        extension_servers: servers,
        ..DaemonArgs::default()
    });
    let err = runtime::block_on(async move { spawned.finished().await }).unwrap_err();
    assert_eq!(
        err.message(),
        "Cannot serve non-core API resources over the core unix socket"
    );
}
