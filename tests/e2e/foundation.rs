use tollgate_e2e::Stack;

#[tokio::test]
async fn the_stack_starts_and_every_health_endpoint_answers() {
    let stack = Stack::start().await.expect("stack starts");
    for url in [
        stack.control_plane_url("/health/live"),
        stack.control_plane_url("/health/ready"),
        format!("http://127.0.0.1:{}/health/live", stack.ports.proxy_admin),
        format!(
            "http://127.0.0.1:{}/metrics",
            stack.ports.control_plane_metrics
        ),
        format!("http://127.0.0.1:{}/metrics", stack.ports.proxy_admin),
    ] {
        let r = stack.http.get(&url).send().await.expect(&url);
        assert!(r.status().is_success(), "{url} answered {}", r.status());
    }
}

#[tokio::test]
async fn unmetered_reads_pass_through_the_proxy_unchanged() {
    let stack = Stack::start().await.expect("stack starts");
    let r = stack
        .http
        .get(stack.proxy_url("/api/v1/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "tickets": [] }));
}

#[tokio::test]
async fn the_token_subcommand_prints_a_jwt_for_the_customer() {
    let stack = Stack::start().await.expect("stack starts");
    let token = stack.token("cust-e2e-1").unwrap();
    assert_eq!(token.split('.').count(), 3, "{token}");
}

#[tokio::test]
async fn the_plan_catalog_is_public() {
    let stack = Stack::start().await.expect("stack starts");
    let plans: serde_json::Value = stack
        .http
        .get(stack.control_plane_url("/api/v1/billing/plans"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = plans
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["free", "premium", "enterprise"]);
    assert_eq!(plans[1]["monthly_fee"], "199.00");
    assert_eq!(plans[1]["overage_rate"], "1.99");
    assert_eq!(plans[0]["overage_rate"], serde_json::Value::Null);
}

#[tokio::test]
async fn logs_are_json_with_request_and_customer_ids_and_never_hold_secrets_or_tokens() {
    let mut stack = Stack::start().await.expect("stack starts");
    let token = stack.token("logged").unwrap();
    // Traffic that touches every secret: customer tokens through the proxy and the billing
    // API, a bad token, the service token on the internal API.
    for _ in 0..3 {
        stack.create_ticket(&token).await.unwrap();
    }
    let bad = tollgate_e2e::foreign_token("logged").unwrap();
    let _ = stack.create_ticket(&bad).await.unwrap();
    let r = stack
        .http
        .get(stack.control_plane_url("/api/v1/billing/usage"))
        .bearer_auth(&token)
        .header("x-request-id", "req-logs-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-logs-test-1");
    let _ = stack
        .http
        .get(stack.control_plane_url("/api/v1/billing/usage"))
        .bearer_auth(&bad)
        .send()
        .await
        .unwrap();
    stack.publish("logged").await.unwrap();
    stack.wait_for_ledger("logged", 3).await.unwrap();

    let mut cp = stack.control_plane.take().unwrap();
    let mut proxy = stack.proxy.take().unwrap();
    proxy.terminate(std::time::Duration::from_secs(10)).unwrap();
    cp.terminate(std::time::Duration::from_secs(10)).unwrap();
    let secrets = [
        "test-only-hs256-secret-0123456789abcdef",
        "test-service-token",
        token.as_str(),
        bad.as_str(),
        stack.database.url.as_str(),
    ];
    for (name, logs) in [("control plane", cp.logs()), ("proxy", proxy.logs())] {
        assert!(!logs.trim().is_empty(), "{name} logged nothing");
        for line in logs.lines().filter(|l| !l.trim().is_empty()) {
            let parsed: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name} wrote a non-JSON line ({e}): {line}"));
            assert!(
                parsed["level"].is_string() && parsed["timestamp"].is_string(),
                "{line}"
            );
            for secret in secrets {
                assert!(
                    !line.contains(secret),
                    "{name} logged a secret or token: {line}"
                );
            }
            // A JWT's header is the same for every token the issuer signs.
            assert!(
                !line.contains("eyJ"),
                "{name} logged something JWT-like: {line}"
            );
        }
    }
    let request_line = cp
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["span"]["request_id"] == "req-logs-test-1")
        .expect("the billing request is logged with its request id");
    assert_eq!(request_line["span"]["customer"], "logged", "{request_line}");
}
