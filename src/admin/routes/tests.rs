use super::*;

#[test]
fn templates_match_one_segment() {
    assert_eq!(
        matches("/api/v1/approvals/{id}", "/api/v1/approvals/abc"),
        Some(vec!["abc".to_string()])
    );
    assert_eq!(
        matches("/p/{id}/labels/{label}", "/p/reply/labels/production"),
        Some(vec!["reply".to_string(), "production".to_string()])
    );
    assert_eq!(
        matches("/api/v1/approvals/{id}", "/api/v1/approvals/"),
        None
    );
    assert_eq!(
        matches("/api/v1/approvals/{id}", "/api/v1/approvals/a/b"),
        None
    );
    assert_eq!(matches("/healthz", "/healthz"), Some(vec![]));
}

#[test]
fn resolve_reports_wrong_methods() {
    let t = endpoints();
    assert!(matches!(
        resolve(&t, &Method::GET, "/api/v1/approvals/x"),
        Resolved::Found(Op::Api(ApiOp::GetApproval), _)
    ));
    assert!(matches!(
        resolve(&t, &Method::DELETE, "/api/v1/approvals/x"),
        Resolved::WrongMethod(_)
    ));
    assert!(matches!(
        resolve(&t, &Method::GET, "/api/v2"),
        Resolved::NotFound
    ));
}

#[test]
fn every_route_is_documented_once() {
    let t = endpoints();
    let doc = openapi(&t);
    let mut documented = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            assert!(
                t.iter().any(|e| e.path == path && e.method == m),
                "{method} {path}"
            );
            documented += 1;
        }
    }
    assert_eq!(documented, t.len());
}
