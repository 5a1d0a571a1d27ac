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
