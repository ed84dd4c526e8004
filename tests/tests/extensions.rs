//! Extension servers (SPEC §13): the example's `/1.0/extended` across real `microd`
//! processes (SPEC §18 scenario 10), and the rules of §13.2–13.3 on in-process members.

use microcluster_it::{Cluster, texts, wait_until};
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
